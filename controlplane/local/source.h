// Local mode's source of truth: a directory of Kubernetes-shaped YAML files
// (Namespace, Pod, Service, EndpointSlice, AuthorizationPolicy,
// PeerAuthentication; other kinds are ignored). Each file is parsed and
// validated as a whole: a bad file is rejected with one log line naming it and
// the problem, and its last good content stays in effect. A malformed policy
// is rejected alone (as the API server would refuse that one object): the
// rest of its file applies, and the policy's last good version from that file
// stays in force. A policy's warnings are logged once per version.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "controlplane/model/store.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::controlplane::local {

struct ParsedFile {
  model::Objects objects;
  // Policies that did not parse: policyKey ("AuthorizationPolicy ns/name";
  // "" when the document names none) and the parser's message.
  std::vector<std::pair<std::string, std::string>> rejected_policies;
  // Their fail-closed stand-ins, for those without a last good version.
  model::Objects stand_ins;
};
// Parses one file's text; fails (errors name the document and field) on
// anything but a malformed policy.
Result<ParsedFile> parseFile(const std::string& text);
// parseFile, failing on a malformed policy as well.
Result<model::Objects> parseYaml(const std::string& text);

// What the control plane would make of one file's policies, without loading
// it (sluice-controlplane --validate FILE; `lab apply` reports with it). One
// line per finding, in the file's order of kinds:
//   "valid KIND NS/NAME"
//   "warning KIND NS/NAME: WHAT" (accepted; a field has no effect, say)
//   "rejected KIND NS/NAME: WHY" (the document names no object: "rejected: WHY")
//   "rejected: WHY" (the whole file: not YAML, a bad non-policy object)
struct FileCheck {
  bool ok = true;  // nothing rejected
  std::vector<std::string> lines;
};
FileCheck checkFile(const std::string& text);

class DirectorySource {
 public:
  // Loads the directory once (synchronously) and then watches it.
  static Result<std::unique_ptr<DirectorySource>> create(const std::string& dir,
                                                         model::Store& store);
  ~DirectorySource();

  // Re-reads every file; applies what changed. Called by the watcher thread;
  // public for tests.
  void rescan();
  // Files currently rejected, with the reason (for tests and logs).
  std::map<std::string, std::string> rejected() const;
  // Policies currently rejected: "file Kind ns/name" -> the reason.
  std::map<std::string, std::string> rejectedPolicies() const;

 private:
  DirectorySource(std::string dir, model::Store& store) : dir_(std::move(dir)), store_(store) {}
  void watch();
  void apply(const std::string& file, ParsedFile parsed);                    // needs mu_
  void logWarnings(const std::string& file, const model::Objects& objects);  // needs mu_

  std::string dir_;
  model::Store& store_;
  std::map<std::string, std::string> contents_;  // last text seen per file
  std::map<std::string, std::string> rejected_;
  std::map<std::string, std::string> rejected_policies_;
  std::map<std::string, model::Objects> applied_policies_;  // per file, its policies only
  std::map<std::string, std::string> warned_;  // "file Kind ns/name" -> the version logged
  mutable std::mutex mu_;
  UniqueFd inotify_;
  UniqueFd wake_;
  std::jthread thread_;
};

}  // namespace sluice::controlplane::local
