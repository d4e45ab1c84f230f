"""The SCU helper the demo and the tests use re-sends what an aborted association left unanswered."""

from __future__ import annotations

from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage

from pgsam_node.commands.demo import send_files

from ..factories import Geometry, mr_instance
from ..helpers import free_port


def test_an_association_aborted_part_way_is_reopened_for_the_rest(tmp_path):
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(6):
        ds = mr_instance(study, series, i, geometry=Geometry(rows=16, columns=16))
        p = tmp_path / f"{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    got: list[str] = []
    aborted = []

    def on_store(event):
        ds = event.dataset
        if len(got) == 2 and not aborted:  # the first association dies before answering the third
            aborted.append(ds.SOPInstanceUID)
            event.assoc.abort()
            return 0xC000
        got.append(str(ds.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="SINK")
    ae.add_supported_context(MRImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        n = send_files(paths, "127.0.0.1", port, "SINK")
    finally:
        server.shutdown()
    assert aborted, "the test SCP did abort an association"
    assert n == 6 and len(set(got)) == 6
