#include "tools/sluicectl/install.h"

#include <fstream>
#include <sstream>

#include "sluice/common/base64.h"
#include "sluice/common/files.h"
#include "sluice/common/fmt.h"

namespace sluice::ctl {
namespace {

constexpr const char* kManifests =
#include "sluice_manifests.inc"
    ;

}  // namespace

Result<std::string> installManifests(const std::string& ca_dir) {
  std::string out =
      "# Sluice, as `kubectl apply -k deploy/` installs it: sluicectl install | kubectl apply -f "
      "-\n";
  std::string manifests = kManifests;
  if (ca_dir.empty()) {
    out +=
        "# No --ca-dir: the control plane generates a self-signed mesh CA on first start and\n"
        "# keeps it in the Secret sluice-system/sluice-ca (bring your own for production).\n";
    return out + manifests;
  }
  std::string data;
  for (const char* key : {"root-cert.pem", "ca-cert.pem", "ca-key.pem"}) {
    auto text = readFile(ca_dir + "/" + key);
    if (!text)
      return fail(
          fmt::format("--ca-dir: {} (tools/gen-ca.sh DIR writes root-cert.pem, "
                      "ca-cert.pem and ca-key.pem)",
                      text.error().describe()));
    if (text->find("-----BEGIN ") == std::string::npos)
      return fail(fmt::format("--ca-dir: {}/{} is not PEM", ca_dir, key));
    data += fmt::format("  {}: {}\n", key, base64Encode(*text));
  }
  const std::string secret = fmt::format(
      "---\n# The mesh CA from {} (--ca-dir); the control plane reads it through the API.\n"
      "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sluice-ca\n  namespace: sluice-system\n"
      "  labels:\n    app.kubernetes.io/part-of: sluice\ntype: Opaque\ndata:\n{}",
      ca_dir, data);
  // Right after the Namespace, deploy/'s first resource.
  const std::string marker = "---\n# deploy/";
  auto at = manifests.find(marker, manifests.find(marker) + 1);
  if (at == std::string::npos) at = manifests.size();
  manifests.insert(at, secret);
  out += "# With the mesh CA from " + ca_dir + ".\n";
  return out + manifests;
}

std::string uninstallManifests() {
  return R"(# Removing Sluice, in three steps:
#   1. kubectl delete -k deploy/          (or: sluicectl install | kubectl delete -f -)
#      The agents stop; sluice-cni stays chained on each node, so pods created now are
#      refused (and retried by their runtime) rather than started half-meshed.
#   2. sluicectl uninstall | kubectl apply -f -
#      kubectl -n kube-system rollout status ds/sluice-cni-uninstall
#      This DaemonSet runs `sluice-cni uninstall` on every node: the sluice-cni entry
#      leaves the CNI configuration and the binary leaves the CNI bin dir.
#   3. sluicectl uninstall | kubectl delete -f -
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: sluice-cni-uninstall
  namespace: kube-system
  labels:
    app.kubernetes.io/name: sluice-cni-uninstall
    app.kubernetes.io/part-of: sluice
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: sluice-cni-uninstall
  template:
    metadata:
      labels:
        app.kubernetes.io/name: sluice-cni-uninstall
    spec:
      tolerations:
        - operator: Exists
      automountServiceAccountToken: false
      containers:
        # Un-chains and removes the binary, then waits: rollout status
        # reports every node done.
        - name: uninstall
          image: sluice/cni:dev
          imagePullPolicy: IfNotPresent
          command:
            - /usr/local/bin/sluice-cni
            - uninstall
            - --cni-bin-dir
            - /host/opt/cni/bin
            - --cni-conf-dir
            - /host/etc/cni/net.d
            - --wait
          securityContext:
            runAsUser: 0
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          volumeMounts:
            - name: cni-bin
              mountPath: /host/opt/cni/bin
            - name: cni-conf
              mountPath: /host/etc/cni/net.d
      volumes:
        - name: cni-bin
          hostPath:
            path: /opt/cni/bin
            type: Directory
        - name: cni-conf
          hostPath:
            path: /etc/cni/net.d
            type: Directory
)";
}

}  // namespace sluice::ctl
