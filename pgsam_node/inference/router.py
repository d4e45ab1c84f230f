"""One loaded model per anatomic region: the report decides which model segments a study.

Plus a second opinion: when the default model finds nothing although the report states a lesion,
or finds something the report contradicts (:mod:`.plausibility`), ``model.fallback`` (default: the
zero-shot ``parotid-litemedsam``) segments the study instead.

``model.path`` (default: the bundled parotid model) segments every study unless
``model.by_region`` names a model for the region the report's findings name (``gland``: parotid,
submandibular, brain). The default routes brain studies to the bundled zero-shot
``brain-lesion-litemedsam``. Studies that keep the default model and whose T2 or T1C is not
fat-saturated (read from the images, :mod:`.fat_sat`) go to ``model.non_fat_sat`` instead. A routed model is loaded on its first study and then kept; its
version goes into the run record and the SEG like any model's.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pgsam_node.config import ModelSettings
from pgsam_node.findings import Findings
from pgsam_node.inference.choice import ChoosingPredictor, model_that_ran
from pgsam_node.inference.fat_sat import FatSatSwitch

log = logging.getLogger(__name__)

#: Folder of the models shipped inside the package.
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "resources" / "models"


def resolve_model(value: str | Path) -> Path:
    """A bundled model's name (``brain-lesion-litemedsam``) or a folder path -> the folder."""
    text = str(value)
    if "/" not in text and "\\" not in text and (BUNDLED_MODELS / text).is_dir():
        return BUNDLED_MODELS / text
    return Path(text).expanduser()


class ModelRouter:
    """The default :class:`~.predictor.Predictor` plus lazily loaded per-region ones.

    Attribute access falls through to the default predictor (``model_version``, ``cfg``,
    ``predict``...), so code that knows nothing of regions keeps working.
    """

    def __init__(self, settings: ModelSettings, default: Any, loader=None) -> None:
        self.settings = settings
        self.default = default
        self._loader = loader
        self._routes = {region: resolve_model(target) for region, target in (settings.by_region or {}).items()}
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, m: ModelSettings) -> ModelRouter:
        from pgsam_node.inference.predictor import Predictor

        return cls(m, Predictor.from_settings(m))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["default"], name)

    def region_for(self, findings: Findings | None) -> str | None:
        """The routed region of a report's findings, or None (the default model)."""
        region = findings.gland if findings is not None else None
        return region if region in self._routes else None

    def for_findings(self, findings: Findings | None) -> Any:
        """The predictor for a study whose report gave ``findings``."""
        region = self.region_for(findings)
        if region is not None:
            return self._route(region, self._routes[region])
        primary = self.default
        companion = self.settings.fat_sat_companion()
        if companion is not None:
            cpath = resolve_model(companion)
            primary = FatSatSwitch(self.default, cpath.name, lambda: self._route("non_fat_sat", cpath),
                                   self.settings.fat_rank_threshold)
        if self.settings.fallback and findings is not None and findings.present:
            path = resolve_model(str(self.settings.fallback))
            return WithFallback(primary, path.name, lambda: self._route("fallback", path),
                                self.settings.fallback_components_per_lesion, self.settings.fallback_size_ratio,
                                self.settings.fallback_keep_stated_regions, self.settings.fallback_keep_min_share)
        return primary

    def _route(self, region: str, path: Path) -> Any:
        with self._lock:
            if region not in self._loaded:
                self._loaded[region] = self._load(path)
                log.info("loaded the %s model %s", region, self._loaded[region].model_version)
            return self._loaded[region]

    def _load(self, path: Path) -> Any:
        if self._loader is not None:
            return self._loader(path)
        from pgsam_node.inference.predictor import Predictor

        m = self.settings.model_copy(update={"path": path})
        return Predictor.from_settings(m)


class WithFallback(ChoosingPredictor):
    """The default predictor, and a second model for when its result contradicts the report.

    Used only for studies whose report states a lesion (``findings.present``); one object per
    study. The second model runs when the default one finds nothing, or finds something the report
    contradicts (:func:`~.plausibility.doubt`: many more separate regions than stated lesions, or a
    largest region far from the stated size) and the default's own largest region(s), as many as
    the report states lesions (:func:`~.plausibility.stated_regions`), do not agree with the size
    it states either: when they do, and hold most of the mask (``model.fallback_keep_min_share``),
    they are the answer (``model.fallback_keep_stated_regions``, default on; a report without a size
    cannot vouch for them). Its result replaces a doubted one only when it is
    non-empty and not doubted itself; otherwise the default's result stands, and the notes say both.
    The run record's model version names both; after :meth:`predict`, ``cfg`` (segment codes,
    weights hash for the SEG) is the configuration of the model that produced the mask, and the
    result's notes say when that was the fallback. The fallback model is loaded on first need.
    """

    def __init__(self, primary: Any, fallback_name: str, load_fallback, components_per_lesion: int,
                 size_ratio: float, keep_stated_regions: bool = True, keep_min_share: float = 0.5) -> None:
        super().__init__(primary, fallback_name, load_fallback)
        self.components_per_lesion = components_per_lesion
        self.size_ratio = size_ratio
        self.keep_stated_regions = keep_stated_regions
        self.keep_min_share = keep_min_share

    @property
    def primary(self) -> Any:
        return self.first

    def _doubt(self, mask, affine, findings) -> str | None:
        from pgsam_node.inference.plausibility import doubt

        return doubt(mask, affine, findings, self.components_per_lesion, self.size_ratio)

    def predict(self, channels, valid, findings, report_text, affine, postprocess: bool = True):
        res = self.primary.predict(channels, valid, findings, report_text, affine, postprocess=postprocess)
        found = bool(res.mask.any())
        why = self._doubt(res.mask, affine, findings) if found else None
        if found and why is None:
            return res
        if found and self.keep_stated_regions and findings is not None and findings.size_mm and self.size_ratio > 0:
            # only a report that states a size can vouch for the region kept
            from pgsam_node.inference.plausibility import stated_regions

            kept = stated_regions(res.mask, findings)
            share = float(kept.sum()) / float(max(1, (res.mask > 0).sum()))
            if share < self.keep_min_share:
                why = f"{why}; its largest region(s) hold only {share:.0%} of it"
            elif self._doubt(kept, affine, findings) is None:
                res.mask = kept.astype(res.mask.dtype)
                res.notes = list(res.notes) + [f"{model_that_ran(self.primary)}'s result contradicted the report ({why}); "
                                               "its largest region(s), as many as the report states lesions, agree with it "
                                               "and were kept"]
                return res
        second = self._load_second()
        out = second.predict(channels, valid, findings, report_text, affine, postprocess=postprocess)
        name, other = model_that_ran(self.primary), second.model_version
        lead = f"{name} found nothing" if not found else f"{name}'s result contradicts the report ({why})"
        # After an empty result the fallback's stands whatever it is; a doubted one is replaced only
        # by a result that is not doubted itself.
        why2 = None if not found else self._doubt(out.mask, affine, findings) if out.mask.any() else "it found nothing"
        if why2 is None:
            self.used = second
            out.notes = list(res.notes) + [f"{lead}; fallback {other} segmented the study"] + list(out.notes)
            return out
        res.notes = list(res.notes) + [f"{lead}; fallback {other} was no better ({why2}), so {name}'s result stands"]
        return res
