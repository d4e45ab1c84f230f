"""ORU^R01 / ADT test messages as a RIS would send them (segments joined by CR)."""

from __future__ import annotations


def oru(
    control: str = "MSG0001",
    patient_id: str = "PAT123",
    accession: str = "ACC1001",
    placer: str = "PL1001",
    filler: str = "FL1001",
    status: str = "F",
    lines: tuple[str, ...] = ("Left parotid: 2.3 x 1.8 cm well-defined mass in the superficial lobe.", "IMPRESSION: pleomorphic adenoma."),
    study_uid: str | None = "1.2.826.0.1.3680043.8.498.1",
    msg_type: str = "ORU^R01^ORU_R01",
    obs_time: str = "20261120093000",
    charset: str = "UNICODE UTF-8",
    study_uid_in_zds: bool = False,
) -> str:
    segs = [
        f"MSH|^~\\&|RIS|HOSP|PGSAM|HOSP|20261120101500||{msg_type}|{control}|P|2.5||||||{charset}"
        if charset
        else f"MSH|^~\\&|RIS|HOSP|PGSAM|HOSP|20261120101500||{msg_type}|{control}|P|2.5",
        f"PID|1||{patient_id}^^^HOSP^MR||DOE^JANE||19700101|F",
        f"OBR|1|{placer}^RIS|{filler}^RIS|MRPAROTID^MR Parotid^L|||{obs_time}|||||||||||{accession}||||20261120101000|||{status}",
    ]
    for i, line in enumerate(lines, start=1):
        segs.append(f"OBX|{i}|FT|&GDT^Report text^L||{line}||||||{status}")
    if study_uid and not study_uid_in_zds:
        segs.append(f"OBX|{len(lines) + 1}|ST|113014^DICOM Study^DCM||{study_uid}||||||{status}")
    if study_uid and study_uid_in_zds:
        segs.append(f"ZDS|{study_uid}^RIS^Application^DICOM")
    return "\r".join(segs) + "\r"


def adt(control: str = "ADT0001") -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|HIS|HOSP|PGSAM|HOSP|20261120101500||ADT^A01^ADT_A01|{control}|P|2.5",
            "EVN|A01|20261120101500",
            "PID|1||PAT123^^^HOSP^MR||DOE^JANE||19700101|F",
        ]
    ) + "\r"


def segments(ack: bytes | str) -> dict[str, list[str]]:
    """ACK segments by name → fields (MSH shifted so fields[n] is MSH-n)."""
    text = ack.decode("utf-8") if isinstance(ack, bytes) else ack
    out: dict[str, list[str]] = {}
    for seg in filter(None, text.split("\r")):
        parts = seg.split("|")
        out[parts[0]] = (["MSH", "|"] + parts[1:]) if parts[0] == "MSH" else parts
    return out
