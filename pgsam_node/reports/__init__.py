"""Reports: RIS lookup, HL7 intake, the embedded report store, waiting for a report, report-text parsing."""
