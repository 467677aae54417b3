// `sluicectl install` and `sluicectl uninstall`: the manifests, printed for
// `kubectl apply -f -`, as `linkerd install` does.
#pragma once

#include <string>

#include "sluice/common/result.h"

namespace sluice::ctl {

// deploy/'s resources (what `kubectl apply -k deploy/` installs). With a CA
// directory (root-cert.pem, ca-cert.pem, ca-key.pem, as tools/gen-ca.sh
// writes them), the Secret sluice-ca is added after the Namespace, so the
// control plane uses that CA instead of generating a self-signed one.
Result<std::string> installManifests(const std::string& ca_dir);

// A DaemonSet that runs `sluice-cni uninstall` on every node (the chain entry
// and the binary out), with the steps to remove Sluice in its header.
std::string uninstallManifests();

}  // namespace sluice::ctl
