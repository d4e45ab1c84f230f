"""Volume -> mask with a PG-SAM model folder, loaded once and kept between studies.

:class:`Predictor` normalises and resizes the slices (:mod:`pgsam_node.inference.preprocessing`), runs the
model slice by slice in batches (CUDA with autocast when available, else CPU, always under
``torch.inference_mode``), resizes the probabilities back to the reference grid and post-processes
the 3-D mask: connected components on the side the report contradicts are dropped (patient left /
right from the affine, relative to the body centre) and so are tiny ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import expit

from pgsam_node.config import ModelSettings
from pgsam_node.errors import InferenceError, ModelError
from pgsam_node.findings import Findings, findings_vector
from pgsam_node.geometry.normalize import NormParams
from pgsam_node.inference.flip import flip_averaged
from pgsam_node.inference.sizing import grow_to_stated_size, shrink_to_stated_size

log = logging.getLogger(__name__)

#: First-pass heat-map probability above which a probed slice is kept (lower than the box
#: threshold: the probe sees one sequence, and a missed slice cannot be recovered later).
PROBE_THRESHOLD = 0.3

#: The bundled parotid model (trained on synthetic studies, see docs/model.md).
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "resources" / "models" / "parotid-tiny"


@dataclass
class InferenceResult:
    """Output of :meth:`Predictor.predict`.

    Attributes
    ----------
    mask
        (Z, Y, X) uint8, 1 = lesion, on the reference grid.
    prob
        (Z, Y, X) float32 lesion probability before post-processing.
    seconds
        Wall time per stage ("prepare", "model", "postprocess", "total").
    notes
        What post-processing removed (for the run record; no patient data).
    """

    mask: np.ndarray
    prob: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device is 'cuda' but CUDA is not available")
    return torch.device(device)


def component_sides(labels: np.ndarray, n: int, affine: np.ndarray, centre_lps: np.ndarray) -> list[str]:
    """Patient side ("left"/"right") of each labelled component's centroid.

    Left/right is LPS x relative to the body centre: patient left is +x (PS3.3 C.7.6.2.1.1),
    independent of how the image is displayed or flipped.
    """
    from pgsam_node.model.coords import voxel_to_lps

    sides = []
    if n == 0:
        return sides
    cents = ndimage.center_of_mass(np.ones_like(labels, dtype=np.float32), labels, range(1, n + 1))
    for c in cents:
        zc, yc, xc = c
        lps = voxel_to_lps(affine, np.array([[xc, yc, zc]]))[0]
        sides.append("left" if lps[0] - centre_lps[0] >= 0 else "right")
    return sides


def side_filter(mask: np.ndarray, affine: np.ndarray, centre_lps: np.ndarray, findings: Findings | None, min_voxels: int) -> tuple[np.ndarray, list[str]]:
    """Keep the 3-D components that agree with the report's side and are not tiny.

    Parameters
    ----------
    mask
        (Z, Y, X) bool.
    affine, centre_lps
        Grid affine and body centre (LPS).
    findings
        Report findings; ``side`` left/right keeps only that side, and sides listed in
        ``negated_sides`` are dropped. None or bilateral: no side rule.
    min_voxels
        Components smaller than this are dropped.

    Returns
    -------
    tuple
        (filtered mask (Z, Y, X) bool, notes).
    """
    st = ndimage.generate_binary_structure(3, 3)
    labels, n = ndimage.label(mask, structure=st)
    if n == 0:
        return mask.astype(bool), []
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, range(1, n + 1))
    sides = component_sides(labels, n, affine, centre_lps)
    allowed = {"left", "right"}
    if findings is not None:
        if findings.side in ("left", "right"):
            allowed = {findings.side}
        allowed -= {s for s in (findings.negated_sides or []) if s in ("left", "right")} - ({findings.side} if findings.side else set())
    keep = np.zeros(n + 1, dtype=bool)
    notes = []
    dropped_side = dropped_small = 0
    for i in range(n):
        if sizes[i] < min_voxels:
            dropped_small += 1
        elif sides[i] not in allowed:
            dropped_side += 1
        else:
            keep[i + 1] = True
    if dropped_side:
        notes.append(f"dropped {dropped_side} component(s) on the side the report excludes")
    if dropped_small:
        notes.append(f"dropped {dropped_small} component(s) below {min_voxels} voxels")
    return keep[labels], notes


class Predictor:
    """A loaded model ready to segment studies.

    Parameters
    ----------
    model, cfg
        A :class:`~pgsam_node.model.pgsam.PGSAM` and its :class:`~pgsam_node.model.presets.ModelConfig`.
    device
        Torch device.
    batch_size
        Slices per forward pass.
    text_encoder
        Folder of the text encoder (None = the packaged all-MiniLM-L6-v2); loaded on first use.
    """

    def __init__(self, model, cfg, device, batch_size: int = 8, text_encoder: str | Path | None = None, threshold: float | None = None,
                 slice_selection: str = "auto", probe_stride: int = 2, embedding_cache_slices: int = 72,
                 size_growth_floor: float = 0.1, flip_tta: bool = False, assume_enhancement: bool = True,
                 size_shrink_ceiling: float = 0.0) -> None:
        from pgsam_node.inference.proposals import ProposalParams
        from pgsam_node.inference.selective import EmbeddingLRU

        self.model = model
        self.cfg = cfg
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.threshold = float(cfg.threshold if threshold is None else threshold)
        self._text_encoder_dir = text_encoder
        self._text_encoder: Any = None
        self.slice_selection = slice_selection
        self.probe_stride = max(1, int(probe_stride))
        self.size_growth_floor = float(size_growth_floor)
        self.size_shrink_ceiling = float(size_shrink_ceiling)
        self.flip_tta = bool(flip_tta)
        #: Settings of the zero-shot proposals (asymmetry-localiser models only).
        self.proposal_params = ProposalParams(assume_enhancement=bool(assume_enhancement))
        boxed = getattr(model, "box_head", None) is not None or self.proposals
        self.embeddings = EmbeddingLRU(embedding_cache_slices if boxed else 0)

    @classmethod
    def from_dir(cls, path: str | Path | None = None, device: str = "auto", batch_size: int = 8,
                 text_encoder: str | Path | None = None, threshold: float | None = None, **options: Any) -> Predictor:
        """Load a model folder (None = the bundled parotid model); ``options`` as :class:`Predictor`'s."""
        from pgsam_node.model.checkpoint import load_model_dir

        path = Path(path) if path else BUNDLED_MODEL_DIR
        dev = resolve_device(device)
        model, cfg = load_model_dir(path, dev)
        log.info("loaded model %s on %s", cfg.version, dev)
        return cls(model, cfg, dev, batch_size=batch_size, text_encoder=text_encoder, threshold=threshold, **options)

    @classmethod
    def from_settings(cls, m: ModelSettings) -> Predictor:
        """The one loader: the model the ``model`` settings section names (``path``, ``device``,
        ``batch_size``, ``text_encoder``, ``threshold``, ``slice_selection``, ``probe_stride``,
        ``embedding_cache_slices``, ``size_growth_floor``, ``size_shrink_ceiling``, ``flip_tta``, ``assume_enhancement``)."""
        return cls.from_dir(m.path, device=m.device, batch_size=m.batch_size, text_encoder=m.text_encoder,
                            threshold=m.threshold, slice_selection=m.slice_selection, probe_stride=m.probe_stride,
                            embedding_cache_slices=m.embedding_cache_slices, size_growth_floor=m.size_growth_floor,
                            flip_tta=m.flip_tta, assume_enhancement=m.assume_enhancement, size_shrink_ceiling=m.size_shrink_ceiling)

    def for_findings(self, findings: Findings | None) -> Predictor:
        """One model segments every study (a :class:`~.router.ModelRouter` chooses per report)."""
        return self

    @property
    def proposals(self) -> bool:
        """Whether box prompts come from the zero-shot asymmetry proposals (:mod:`.proposals`)."""
        return getattr(self.cfg.arch, "localiser", "") == "asymmetry"

    @property
    def selective(self) -> bool:
        """Whether :meth:`predict` encodes only the slices a first pass selects (see :mod:`.selective`)."""
        if getattr(self.model, "box_head", None) is None or self.slice_selection == "all":
            return False
        return self.slice_selection == "selective" or self.device.type == "cpu"

    @property
    def model_version(self) -> str:
        """Model name and the first 12 hex digits of the weights' SHA-256."""
        return self.cfg.version or f"{self.cfg.name}-{self.cfg.weights_sha256[:12]}"

    @property
    def sequences(self) -> list[str]:
        return list(self.cfg.sequences)

    def text_embedding(self, text: str | None) -> np.ndarray | None:
        """(T,) sentence embedding of the report, or None without text / for no-text models."""
        if not self.cfg.use_text or not text or not text.strip():
            return None
        if self._text_encoder is None:
            from pgsam_node.model.text_encoder import TextEncoder

            self._text_encoder = TextEncoder(self._text_encoder_dir)
            if self._text_encoder.dim != self.cfg.text_dim:
                raise ModelError(f"text encoder gives {self._text_encoder.dim}-d embeddings, the model expects {self.cfg.text_dim}")
        return self._text_encoder.encode([text])[0]

    def predict(
        self,
        channels: dict[str, np.ndarray],
        valid: dict[str, np.ndarray] | None,
        findings: Findings | None,
        report_text: str | None,
        affine: np.ndarray,
        postprocess: bool = True,
    ) -> InferenceResult:
        """Segment one study.

        Parameters
        ----------
        channels
            role -> (Z, Y, X) float32 raw intensities on the reference grid.
        valid
            role -> (Z, Y, X) bool, where each sequence has data (None: all valid).
        findings
            Structured findings of the report (side, diagnosis...), or None.
        report_text
            Report text, or None (the model then runs without text).
        affine
            4x4 reference grid voxel (col, row, slice) -> LPS.
        postprocess
            Apply the report-side and small-component filter.

        Returns
        -------
        InferenceResult
            mask (Z, Y, X) uint8 and prob (Z, Y, X) float32 on the reference grid.
        """
        present = [r for r in self.cfg.sequences if r in channels]
        if not present:
            raise InferenceError(f"none of the model's sequences {self.cfg.sequences} is in the study (got {sorted(channels)})")
        shapes = {tuple(np.shape(v)) for v in channels.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise InferenceError(f"channels must be (Z, Y, X) volumes on one grid, got shapes {sorted(shapes)}")
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise InferenceError("affine must be a finite, invertible 4x4 matrix")
        fov = self.cfg.input_fov_mm
        if fov > 0 and not self.proposals:
            return self._predict_in_window(channels, valid, findings, report_text, affine, postprocess, fov)
        return self._predict(channels, valid, findings, report_text, affine, postprocess)

    def _predict_in_window(self, channels, valid, findings, report_text, affine, postprocess, fov: float) -> InferenceResult:
        """:meth:`_predict` on a ``fov`` mm square centred on the body (:mod:`pgsam_node.inference.field_of_view`)."""
        from pgsam_node.inference.field_of_view import body_window

        t0 = time.perf_counter()
        win = body_window(channels, valid, affine, fov, NormParams(**self.cfg.norm))
        cut, cut_valid = win.cut_study(channels, valid)
        res = self._predict(cut, cut_valid, findings, report_text, win.affine(affine), postprocess)
        shape_yx = next(iter(channels.values())).shape[1:]
        res.mask = win.paste(res.mask, shape_yx)
        res.prob = win.paste(res.prob, shape_yx)
        res.notes.insert(0, f"field of view: the model saw a {fov:g} mm square of {win.h}x{win.w} pixels centred on the body")
        res.seconds["total"] = time.perf_counter() - t0
        return res

    def _predict(self, channels, valid, findings, report_text, affine, postprocess) -> InferenceResult:
        """:meth:`predict` on validated inputs."""
        import torch

        from pgsam_node.inference.preprocessing import prepare_study, resize_slices, slice_inputs

        t0 = time.perf_counter()
        a = self.cfg.arch
        prep = prepare_study(channels, valid, affine, list(self.cfg.sequences), a.img_size, NormParams(**self.cfg.norm))
        if not prep.seq_valid.any():
            raise InferenceError("no sequence has valid data on any slice")
        emb = self.text_embedding(report_text)
        fvec = np.asarray(findings_vector(findings if self.cfg.use_text else None), dtype=np.float32)
        t1 = time.perf_counter()

        z = prep.images.shape[0]
        logits = np.full((z, a.img_size, a.img_size), -20.0, dtype=np.float32)
        use_cuda = self.device.type == "cuda"
        notes: list[str] = []

        def inputs(ks: list[int]):
            items = [slice_inputs(prep, k, self.cfg.context_slices, a.img_size) for k in ks]
            b = len(ks)
            temb = tval = None
            if emb is not None:
                temb = torch.from_numpy(np.repeat(emb[None], b, 0)).to(self.device)
                tval = torch.ones(b, dtype=torch.bool, device=self.device)
            return (torch.from_numpy(np.stack([i[0] for i in items])).to(self.device), torch.from_numpy(np.stack([i[1] for i in items])).to(self.device),
                    torch.from_numpy(np.stack([i[2] for i in items])).to(self.device), temb, tval,
                    torch.from_numpy(np.repeat(fvec[None], b, 0)).to(self.device))

        todo = [k for k in range(z) if prep.seq_valid[k].any()]
        with torch.inference_mode():
            key_role = None
            if self.proposals:  # boxes from the zero-shot proposals; nothing else runs
                key_role = self._run_proposals(prep, inputs, channels, valid, findings, logits, notes)
                todo = []
            elif self.selective:
                todo = self._first_pass(prep, inputs, notes)
            for start in range(0, len(todo), self.batch_size):
                ks = todo[start : start + self.batch_size]
                imgs, vld, crd, temb, tval, fv = inputs(ks)
                with torch.autocast("cuda", enabled=use_cuda):
                    cached = None
                    if self.selective:  # the CPU path reuses the first pass's embeddings; a GPU re-encodes
                        from pgsam_node.inference.selective import embed

                        cached = embed(self.model, imgs, vld, self.embeddings, self.batch_size)
                    out = self.model(imgs, vld, crd, temb, tval, fv, embeddings=cached)
                    if self.flip_tta and cached is None:
                        out = flip_averaged(self.model, out, imgs, vld, crd, temb, tval, fv)
                res = out[:, 0].float().cpu().numpy()
                for j, k in enumerate(ks):
                    logits[k] = res[j]
        t2 = time.perf_counter()
        y, x = prep.shape_yx
        prob = expit(resize_slices(logits, (y, x))).astype(np.float32)
        mask = prob >= self.threshold
        if postprocess:
            voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
            min_vox = max(1, int(round(self.cfg.min_component_mm3 / max(voxel_mm3, 1e-6))))
            if key_role == "T1C" and self.cfg.enhancing_tissue_z > 0:
                from pgsam_node.inference.enhancing import enhancing_tissue

                mask, trimmed = enhancing_tissue(mask, channels, valid, affine, self.cfg.enhancing_tissue_z)
                notes += [trimmed] if trimmed else []
            mask, side_notes = side_filter(mask, affine, prep.centre_lps, findings, min_vox)
            notes += side_notes
            if not self.proposals:  # the zero-shot path's boxes already follow the stated size
                mask, grown = grow_to_stated_size(mask, prob, affine, findings, self.threshold, self.size_growth_floor)
                mask, cut = shrink_to_stated_size(mask, prob, affine, findings, self.threshold, self.size_shrink_ceiling)
                notes += [n for n in (grown, cut) if n]
        t3 = time.perf_counter()
        secs = {"prepare": t1 - t0, "model": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}
        return InferenceResult(mask=mask.astype(np.uint8), prob=prob, seconds=secs, notes=notes)

    def _run_proposals(self, prep, inputs, channels, valid, findings: Findings | None, logits: np.ndarray,
                       notes: list[str]) -> str | None:
        """Decode the zero-shot proposals' boxes (one decoder pass per box, masks united by the
        maximum) on the lesion's key sequence; logits outside every box stay -20. Returns the key
        sequence the boxes were decoded on (None when nothing was decoded)."""
        import torch

        from pgsam_node.inference.proposals import propose, proposal_images
        from pgsam_node.inference.selective import embed

        seqs = list(self.cfg.sequences)
        images = proposal_images(channels, valid, seqs, self.cfg.arch.img_size)
        prop = propose(images, prep.seq_valid, seqs, prep.affine, prep.shape_yx, findings, self.proposal_params)
        notes += prop.notes
        if not prop.boxes or prop.key_role not in seqs:
            return None
        key = seqs.index(prop.key_role)
        pairs = [(k, b) for k, bs in sorted(prop.boxes.items()) for b in bs if prep.seq_valid[k, key]]
        if not pairs:  # every boxed slice lies outside the key sequence's coverage
            notes.append(f"no box on a slice that {prop.key_role} covers; nothing decoded")
            return None
        use_cuda = self.device.type == "cuda"
        decoded: list[tuple[int, np.ndarray, np.ndarray, float]] = []
        for start in range(0, len(pairs), self.batch_size):
            part = pairs[start : start + self.batch_size]
            # A slice with several boxes is encoded once: inputs per distinct slice, then each box's row.
            uniq = sorted({k for k, _ in part})
            row = torch.tensor([uniq.index(k) for k, _ in part], device=self.device)
            imgs, _vld, crd, temb, tval, fv = inputs(uniq)
            want = torch.zeros(len(uniq), len(seqs), dtype=torch.bool, device=self.device)
            want[:, key] = True
            boxes = torch.from_numpy(np.stack([b for _, b in part])).to(self.device)
            with torch.autocast("cuda", enabled=use_cuda):
                # The CPU keeps embeddings in the LRU (a re-run of the study encodes nothing); a GPU encodes.
                emb = self.model.encode(imgs, want) if use_cuda else embed(self.model, imgs, want, self.embeddings, self.batch_size)
                out = self.model.forward_parts(imgs[row], want[row], crd[row], *(None if t is None else t[row] for t in (temb, tval, fv)),
                                               boxes=boxes, embeddings=emb[row])
            res = out["masks"][:, 0].float().cpu().numpy()
            iou = out["iou"].float().cpu().numpy()
            decoded += [(k, b, res[j], float(iou[j])) for j, (k, b) in enumerate(part)]
        # Keep the masks the decoder is confident in, relative to its best one in this study
        # (SAM's predicted IoU; a box on tissue that is no lesion gets a low one).
        best = max(d[3] for d in decoded)
        kept = [d for d in decoded if d[3] >= best - prop.params.iou_margin]
        for k, b, res_k, _ in kept:
            inside = np.full(res_k.shape, -20.0, np.float32)
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            inside[y0 : y1 + 1, x0 : x1 + 1] = res_k[y0 : y1 + 1, x0 : x1 + 1]
            logits[k] = np.maximum(logits[k], inside)
        notes.append(f"decoded {len(pairs)} box(es) on {len({k for k, _ in pairs})} slice(s)")
        if len(kept) < len(decoded):
            notes.append(f"dropped {len(decoded) - len(kept)} box mask(s) with predicted IoU below {best - prop.params.iou_margin:.2f}")
        return prop.key_role

    def _first_pass(self, prep, inputs, notes: list[str]) -> list[int]:
        """Probe every ``probe_stride``-th slice with one sequence; return the slices to run in full."""
        import torch

        from pgsam_node.inference.selective import candidate_slices, embed, first_pass_role

        seqs = list(self.cfg.sequences)
        role = first_pass_role(seqs, prep.seq_valid)
        z = prep.images.shape[0]
        if role is None:
            return []
        probe = [k for k in range(0, z, self.probe_stride) if prep.seq_valid[k, role]]
        found: dict[int, bool] = {}
        for start in range(0, len(probe), self.batch_size):
            ks = probe[start : start + self.batch_size]
            imgs, _vld, crd, temb, tval, fv = inputs(ks)
            want = torch.zeros(len(ks), len(seqs), dtype=torch.bool, device=self.device)
            want[:, role] = True
            emb = embed(self.model, imgs, want, self.embeddings, self.batch_size)
            ctx = self.model.prompt_generator.context_vector(temb, tval, fv, len(ks))
            heat = self.model.box_head(emb, want, crd, ctx)
            hit = (torch.sigmoid(heat.float()) > PROBE_THRESHOLD).flatten(1).any(dim=1).cpu().numpy()
            found.update({k: bool(h) for k, h in zip(ks, hit)})
        todo = [k for k in candidate_slices(found, z, self.probe_stride) if prep.seq_valid[k].any()]
        notes.append(f"first pass on {seqs[role]}: {len(probe)} slice(s) probed, {len(todo)} of {z} selected")
        return todo
