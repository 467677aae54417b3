// The `Accepted` condition Sluice writes on its policy objects
// (status.conditions, as metav1.Condition): True with reason Accepted, or
// AcceptedWithWarnings and the warnings; False with reason Invalid and the
// rejection. Computed from the object as the API server sent it, so an
// object whose status already says so needs no write (a status write is
// itself a MODIFIED event: comparing is what ends that loop).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace sluice::controlplane::kube {

struct StatusWrite {
  std::string ns, name;
  std::string patch;    // a JSON merge patch of the status subresource
  std::string summary;  // the condition in a few words, for the log
};

// `rejection` empty: the object was accepted with `warnings` (maybe none).
// nullopt when the object's Accepted condition already has this status,
// reason and message for its current generation.
std::optional<StatusWrite> acceptedStatus(const nlohmann::json& object,
                                          const std::string& rejection,
                                          const std::vector<std::string>& warnings);

}  // namespace sluice::controlplane::kube
