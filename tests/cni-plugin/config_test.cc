#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "cni-plugin/config.h"

#include <doctest/doctest.h>

#include "sluice/common/cni_protocol.h"

using namespace sluice::cni;

TEST_SUITE("config") {
  TEST_CASE("a chained 1.0.0 config with prevResult") {
    auto c = parseConfig(
        R"({"cniVersion":"1.0.0","name":"k8s","type":"sluice-cni","agentSocket":"/run/x.sock",
      "failOpen":true,"timeoutMs":2000,"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
      "ips":[{"address":"10.244.1.5/24","interface":0},{"address":"fd00:0::05/64"}]}})");
    REQUIRE(c.has_value());
    CHECK(c->agent_socket == "/run/x.sock");
    CHECK(c->fail_open);
    CHECK(c->timeout_ms == 2000);
    // Both families reach the agent; IPv6 in its canonical form.
    CHECK(c->ips == std::vector<std::string>{"10.244.1.5", "fd00::5"});
    CHECK(c->prev_result["interfaces"][0]["name"] == "eth0");
  }
  TEST_CASE("a 0.4.0 prevResult (ips carry a version field)") {
    auto c = parseConfig(R"({"cniVersion":"0.4.0","name":"k8s","prevResult":{"cniVersion":"0.4.0",
      "ips":[{"version":"4","address":"10.1.2.3/16","gateway":"10.1.0.1"}]}})");
    REQUIRE(c.has_value());
    CHECK(c->ips == std::vector<std::string>{"10.1.2.3"});
    CHECK(c->agent_socket == "/var/run/sluice/cni.sock");
    CHECK_FALSE(c->fail_open);
  }
  TEST_CASE("the pod's addresses: those of the sandbox interface CNI_IFNAME") {
    // bridge: the bridge's gateway address first, on a host-side interface.
    auto host_first = nlohmann::json::parse(R"({"cniVersion":"1.0.0","interfaces":[
      {"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/p"},
      {"name":"net1","sandbox":"/var/run/netns/p"}],
      "ips":[{"address":"10.244.1.1/24","interface":0},{"address":"10.244.1.77/24","interface":2},
             {"address":"192.168.9.9/24","interface":3},{"address":"fd00::77/64"}]})");
    CHECK(resultIps(host_first, "eth0").value() ==
          std::vector<std::string>{"10.244.1.77", "fd00::77"});
    CHECK(resultIps(host_first, "net1").value() ==
          std::vector<std::string>{"192.168.9.9", "fd00::77"});
    // Without CNI_IFNAME: every sandbox interface's.
    CHECK(resultIps(host_first).value() ==
          std::vector<std::string>{"10.244.1.77", "192.168.9.9", "fd00::77"});
    // A result that marks no interface as in the sandbox: every address, as before.
    auto unmarked = nlohmann::json::parse(
        R"({"interfaces":[{"name":"cali1"}],"ips":[{"address":"10.0.0.5/32","interface":0}]})");
    CHECK(resultIps(unmarked, "eth0").value() == std::vector<std::string>{"10.0.0.5"});
    auto c =
        parseConfig(R"({"cniVersion":"1.0.0","prevResult":)" + host_first.dump() + "}", "eth0");
    REQUIRE(c.has_value());
    CHECK(c->ips == std::vector<std::string>{"10.244.1.77", "fd00::77"});
  }
  TEST_CASE("DEL's lenient reading keeps what is usable and defaults the rest") {
    auto c = lenientConfig(R"({"cniVersion":"1.1.0","agentSocket":"/run/a.sock",
      "timeoutMs":"5000","logFile":"/tmp/l","failOpen":"yes"})");
    CHECK(c.cni_version == "1.0.0");
    CHECK(c.agent_socket == "/run/a.sock");
    CHECK(c.timeout_ms == 5000);
    CHECK(c.log_file == "/tmp/l");
    auto d = lenientConfig(R"({"cniVersion":"0.4.0","agentSocket":7,"timeoutMs":250})");
    CHECK(d.cni_version == "0.4.0");
    CHECK(d.agent_socket == "/var/run/sluice/cni.sock");
    CHECK(d.timeout_ms == 250);
    CHECK(lenientConfig("not json").agent_socket == "/var/run/sluice/cni.sock");
  }
  TEST_CASE("malformed configs are refused with the right CNI code") {
    struct Case {
      const char* text;
      int code;
    } cases[] = {
        {"", kDecodingFailure},
        {"{", kDecodingFailure},
        {"[1,2]", kDecodingFailure},
        {"\"x\"", kDecodingFailure},
        {R"({"name":"x"})", kInvalidConfig},
        {R"({"cniVersion":1})", kInvalidConfig},
        {R"({"cniVersion":"0.2.0"})", kIncompatibleVersion},
        {R"({"cniVersion":"1.0.0","failOpen":"yes"})", kInvalidConfig},
        {R"({"cniVersion":"1.0.0","timeoutMs":5})", kInvalidConfig},
        {R"({"cniVersion":"1.0.0","timeoutMs":"5000"})", kInvalidConfig},
        {R"({"cniVersion":"1.0.0","agentSocket":""})", kInvalidConfig},
        {R"({"cniVersion":"1.0.0","prevResult":[]})", kDecodingFailure},
        {R"({"cniVersion":"1.0.0","prevResult":{"ips":{}}})", kDecodingFailure},
        {R"({"cniVersion":"1.0.0","prevResult":{"ips":[{"address":7}]}})", kDecodingFailure},
        {R"({"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"300.1.1.1/24"}]}})",
         kDecodingFailure},
        {R"({"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"fd00::5::6/64"}]}})",
         kDecodingFailure},
        {R"({"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"fd00:zz::5/64"}]}})",
         kDecodingFailure},
        {R"({"cniVersion":"1.0.0","prevResult":{"interfaces":[{"name":"eth0","sandbox":"/n"}],)"
         R"("ips":[{"address":"10.1.1.5/24","interface":-1}]}})",
         kDecodingFailure},
        {R"({"cniVersion":"1.0.0","prevResult":{"interfaces":[{"name":"eth0","sandbox":"/n"}],)"
         R"("ips":[{"address":"10.1.1.5/24","interface":1}]}})",
         kDecodingFailure},
        {R"({"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"10.1.1.5/24","interface":"0"}]}})",
         kDecodingFailure},
    };
    for (const auto& c : cases) {
      CAPTURE(c.text);
      auto r = parseConfig(c.text);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code == c.code);
      CHECK_FALSE(r.error().msg.empty());
    }
    CHECK_FALSE(parseConfig(std::string(2 << 20, ' ')).has_value());
  }
  TEST_CASE(
      "a near miss of one of our fields is refused, naming it - other fields are left alone") {
    for (const char* text :
         {R"({"cniVersion":"1.0.0","failopen":true})", R"({"cniVersion":"1.0.0","timeoutms":100})",
          R"({"cniVersion":"1.0.0","agentSockt":"/s"})",
          R"({"cniVersion":"1.0.0","logfile":"/l"})"}) {
      CAPTURE(text);
      auto r = parseConfig(text);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code == kInvalidConfig);
      CHECK(r.error().msg.find("did you mean") != std::string::npos);
    }
    auto twice = parseConfig(R"({"cniVersion":"1.0.0","failOpen":true,"failOpen":false})");
    REQUIRE_FALSE(twice.has_value());
    CHECK(twice.error().msg == "field 'failOpen' appears twice: keep one");
    CHECK(parseConfig(  // the same key in two nested objects is no repeat
              R"({"cniVersion":"1.0.0","prevResult":{"interfaces":[{"name":"a"},{"name":"b"}]}})")
              .has_value());
    auto r = parseConfig(R"({"cniVersion":"1.0.0","failopen":true})");
    CHECK(r.error().msg == "unknown field 'failopen' (did you mean 'failOpen'?)");
    auto ok = parseConfig(
        R"({"cniVersion":"1.0.0","type":"sluice-cni","runtimeConfig":{},"capabilities":{},"x":1})");
    CHECK(ok.has_value());
  }
  TEST_CASE("environment and CNI_ARGS") {
    auto e = parseEnvironment(
        {{"CNI_COMMAND", "ADD"},
         {"CNI_CONTAINERID", "c1"},
         {"CNI_NETNS", "/var/run/netns/p"},
         {"CNI_IFNAME", "eth0"},
         {"CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=u"}});
    REQUIRE(e.has_value());
    CHECK(e->args["K8S_POD_NAMESPACE"] == "shop");
    CHECK(e->args["K8S_POD_UID"] == "u");
    // A missing or malformed CNI_* variable is the spec's code 4.
    auto missing = parseEnvironment({{"CNI_COMMAND", "ADD"}});
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code == kInvalidEnvironment);
    CHECK(missing.error().msg.find("CNI_CONTAINERID") != std::string::npos);
    CHECK_FALSE(parseEnvironment({{"CNI_COMMAND", "EXPLODE"}}).has_value());
    CHECK_FALSE(parseEnvironment({{"CNI_COMMAND", "ADD"},
                                  {"CNI_CONTAINERID", "c"},
                                  {"CNI_IFNAME", "eth0"},
                                  {"CNI_NETNS", "/x"},
                                  {"CNI_ARGS", "novalue"}})
                    .has_value());
    CHECK(
        parseEnvironment({{"CNI_COMMAND", "DEL"}, {"CNI_CONTAINERID", "c"}, {"CNI_IFNAME", "eth0"}})
            .has_value());
    // A DEL must reach the agent: a malformed entry is skipped and reported.
    auto del = parseEnvironment({{"CNI_COMMAND", "DEL"},
                                 {"CNI_CONTAINERID", "c"},
                                 {"CNI_IFNAME", "eth0"},
                                 {"CNI_ARGS", "K8S_POD_NAMESPACE=shop;novalue;K8S_POD_NAME=web"}});
    REQUIRE(del.has_value());
    CHECK(del->args["K8S_POD_NAME"] == "web");
    CHECK(del->args_error.find("'novalue'") != std::string::npos);
  }
}

TEST_SUITE("cni_protocol") {
  TEST_CASE("requests round-trip and malformed ones are refused") {
    CniRequest r{"ADD", "c1", "/var/run/netns/p", "eth0", "shop", "web", "u1", {"10.0.0.1"}};
    auto back = decodeRequest(encode(r));
    REQUIRE(back.has_value());
    CHECK(back->pod_uid == "u1");
    CHECK(back->ips == r.ips);
    for (
        const char* bad :
        {"", "null", "{}", R"({"command":"ADD"})", R"({"command":"NUKE","container_id":"c"})",
         R"({"command":"ADD","container_id":"c"})", R"({"command":"DEL","container_id":5})",
         R"({"command":"DEL","container_id":"c","ips":"x"})",
         R"({"command":"DEL","container_id":"c","ips":[1]})",
         // Names the API server would refuse.
         R"({"command":"ADD","container_id":"c","netns":"/n","pod_namespace":"shop","pod_name":"../.."})",
         R"({"command":"ADD","container_id":"c","netns":"/n","pod_namespace":"Shop","pod_name":"web"})"}) {
      CAPTURE(bad);
      CHECK_FALSE(decodeRequest(bad).has_value());
    }
    // The longest pod name is accepted; one longer is not.
    r.pod_name = std::string(253, 'a');
    CHECK(decodeRequest(encode(r)).has_value());
    r.pod_name += "a";
    auto refused = decodeRequest(encode(r));
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().describe().find("is not a Kubernetes pod name") != std::string::npos);
    // Bytes that are not UTF-8 (CNI_ARGS hold any): encoded as U+FFFD, never
    // a throw; the agent then refuses the name.
    r.pod_name = "web\xff";
    std::string text = encode(r);
    CHECK(text.find("web\xef\xbf\xbd") != std::string::npos);
    CHECK_FALSE(decodeRequest(text).has_value());
    CHECK_FALSE(decodeReply("{}").has_value());
    CHECK(decodeReply(encode(CniReply{true, true, "", ""}))->enrolled);
    // The CNI code of a refusal; absent (an older agent) is 0.
    CHECK(decodeReply(encode(CniReply{false, false, "busy", "", kReplyTryAgainLater}))->code == 11);
    CHECK(decodeReply(R"({"ok":false,"error":"x"})")->code == 0);
    CHECK(encode(CniReply{true, true, "", ""}).find("code") == std::string::npos);
  }
}
