-- Orthanc auto-routing to PG-SAM Node.
--
-- When a study becomes stable (no new instance for "StableAge" seconds), forward its MR series
-- to the node. Each forwarded series is marked with the user metadata "PgsamForwarded", so:
--   * the DICOM SEG that the node sends back (a new SEG series in the same study, which makes the
--     study stable again) does not trigger a second forwarding of the MR images;
--   * an MR series that arrives later (a late sequence) is still forwarded on its own.
-- Needs in orthanc.json:  "UserMetadata": { "PgsamForwarded": 1024 }  and a modality "pgsam".

PGSAM_MODALITY = "pgsam"           -- key of the node in "DicomModalities"
FORWARD_MODALITIES = { MR = true }  -- series modalities to forward

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local toSend = {}
  for _, s in ipairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality ~= nil and FORWARD_MODALITIES[modality] then
      local forwarded = ParseJson(RestApiGet('/series/' .. s['ID'] .. '/metadata'))
      local already = false
      for _, name in ipairs(forwarded) do
        if name == 'PgsamForwarded' then already = true end
      end
      if not already then
        table.insert(toSend, s['ID'])
      end
    end
  end
  if #toSend == 0 then
    return
  end
  -- Synchronous C-STORE of the series (one association); on failure Orthanc logs the error
  -- and the series stay unmarked, so the next stable event (or a manual re-send) retries them.
  local ok, err = pcall(function()
    RestApiPost('/modalities/' .. PGSAM_MODALITY .. '/store',
                DumpJson({ Resources = toSend, Synchronous = true }, true))
  end)
  if ok then
    for _, id in ipairs(toSend) do
      RestApiPut('/series/' .. id .. '/metadata/PgsamForwarded', os.date('!%Y-%m-%dT%H:%M:%SZ'))
    end
    print('PG-SAM: forwarded ' .. #toSend .. ' MR series of study ' .. studyId)
  else
    print('PG-SAM: forwarding study ' .. studyId .. ' failed: ' .. tostring(err))
  end
end
