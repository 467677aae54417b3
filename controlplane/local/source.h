// Local mode's source of truth: a directory of Kubernetes-shaped YAML files
// (Namespace, Pod, Service, EndpointSlice; other kinds are ignored). Each file is parsed and
// validated as a whole: a bad file is rejected with one log line naming it and the problem, and its
// last good content stays in effect.
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

// Parses one file's text into objects; errors name the document and field.
Result<model::Objects> parseYaml(const std::string& text);

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

 private:
  DirectorySource(std::string dir, model::Store& store) : dir_(std::move(dir)), store_(store) {}
  void watch();

  std::string dir_;
  model::Store& store_;
  std::map<std::string, std::string> contents_;  // last text seen per file
  std::map<std::string, std::string> rejected_;
  mutable std::mutex mu_;
  UniqueFd inotify_;
  UniqueFd wake_;
  std::jthread thread_;
};

}  // namespace sluice::controlplane::local
