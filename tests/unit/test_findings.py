from pgsam_node.findings import FINDINGS_DIM, Findings, findings_vector


def test_vector_distinguishes_sides_and_unknown():
    left = findings_vector(Findings(side="left", size_mm=23))
    right = findings_vector(Findings(side="right", size_mm=23))
    unknown = findings_vector(None)
    assert len(left) == len(unknown) == FINDINGS_DIM
    assert left != right != unknown
    assert Findings.from_dict(Findings(side="left").to_dict()).side == "left"
