// TEMPORARY stub until the hbone/ rewrite lands (replaced by the real one).
#include "ztunnel/hbone/server.h"
namespace sluice::ztunnel::hbone {
struct Server::Impl {};
Server::Server(proxy::WorkerContext&, CredentialSource&, tls::Contexts&) {}
Server::~Server() = default;
void Server::accept(const std::shared_ptr<proxy::PodState>&, UniqueFd, const sockaddr_in&) {}
bool Server::evictOldestPending(const char*) { return false; }
void Server::removePod(const std::string&) {}
void Server::shutdown() {}
bool Server::idle() const { return true; }
void Server::tick(Clock::time_point) {}
bool Server::fineTick(Clock::time_point) { return false; }
}  // namespace sluice::ztunnel::hbone
