-- Orthanc Lua routing rule: forward each stable CT study to the ICH node.
-- Load with "LuaScripts": ["route_ct_to_node.lua"] in orthanc.json.
-- The node itself decides when a study is complete (quiet period), so forwarding
-- instance by instance is also fine; this sends whole studies once Orthanc sees them stable.
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in pairs(series) do
    if s['MainDicomTags']['Modality'] == 'CT' then
      RestApiPost('/modalities/ichnode/store', s['ID'])
    end
  end
end
