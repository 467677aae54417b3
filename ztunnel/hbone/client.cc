// TEMPORARY stub until the hbone/ rewrite lands (replaced by the real one).
#include "ztunnel/hbone/client.h"
namespace sluice::ztunnel::hbone {
struct Client::Impl {};
Client::Client(proxy::WorkerContext&, CredentialSource&, tls::Contexts&) {}
Client::~Client() = default;
void Client::open(std::unique_ptr<proxy::Attempt> a, const MeshWorkload&) {
  proxy::setLinger0(a->client.get());
}
void Client::removePod(const std::string&) {}
void Client::shutdown() {}
bool Client::idle() const { return true; }
void Client::tick(Clock::time_point) {}
bool Client::fineTick(Clock::time_point) { return false; }
}  // namespace sluice::ztunnel::hbone
