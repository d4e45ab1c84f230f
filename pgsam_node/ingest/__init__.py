"""Ingest: the DICOM acceptor, the listener policy, header scan, durable spool files, index rows, storage commitment."""
