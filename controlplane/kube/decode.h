// What the API server sends a list + watch client, decoded into the model:
// one page of a list and one line of a watch stream. Pure functions (no I/O,
// no state) so that Source stays the only owner of the caches and a fuzz
// target (tests/fuzz/fuzz_kube) can feed them anything.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "controlplane/kube/policy_status.h"
#include "controlplane/model/store.h"
#include "sluice/common/result.h"

namespace sluice::controlplane::kube {

struct ListPage {
  std::map<std::string, model::Objects> objects;  // by model::objectKey, one object each
  std::vector<std::string> skipped;               // why an item was skipped, one line each
  std::vector<std::string> invalid_keys;          // the keys of the skipped items that have one
  // A skipped policy's fail-closed stand-in, by key, for when it has no last
  // good version (common/policy/stand_in.h).
  std::map<std::string, model::Objects> stand_ins;
  std::vector<StatusWrite> status_writes;  // policies whose Accepted condition is stale
  std::string resource_version;            // the list's, "" if none
  std::string continue_token;              // "" on the last page
};

// A page of GET <collection>?limit=N; `kind` and `api_version` are the
// resource's (items of built-in kinds carry neither). Fails when the body is
// not a list.
Result<ListPage> decodeListPage(std::string_view body, const std::string& kind,
                                const std::string& api_version = "");

struct WatchEvent {
  std::string type;              // as sent: ADDED, MODIFIED, DELETED, BOOKMARK, ERROR or other
  std::string resource_version;  // the object's, "" if none
  int error_code = 0;            // ERROR: the Status's code (410: the resourceVersion expired)
  std::string error;             // ERROR: the Status object, shortened for a log line
  std::string key;               // ADDED / MODIFIED / DELETED: model::objectKey of the object
  model::Objects objects;        // ADDED / MODIFIED: the object in the model
  std::string invalid;           // ADDED / MODIFIED: why the object is not usable ("" if it is)
  model::Objects stand_in;       // invalid policy: what enforces it without a last good version
  std::optional<StatusWrite> status_write;  // ADDED / MODIFIED policy: its Accepted condition
};

// One line of a watch stream of `kind`. Fails when the line is not an event
// (not JSON, no type, no object).
Result<WatchEvent> decodeWatchEvent(std::string_view line, const std::string& kind,
                                    const std::string& api_version = "");

}  // namespace sluice::controlplane::kube
