#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"

TEST_SUITE("addr") {
  TEST_CASE("endpoints round-trip and malformed ones are refused") {
    auto sa = sluice::parseEndpoint("10.244.1.5:8080");
    REQUIRE(sa.has_value());
    CHECK(sluice::formatEndpoint(*sa) == "10.244.1.5:8080");
    CHECK_FALSE(sluice::parseEndpoint("10.244.1.5").has_value());
    CHECK_FALSE(sluice::parseEndpoint("10.244.1.5:99999").has_value());
    CHECK_FALSE(sluice::parseEndpoint("10.244.1:80").has_value());
    CHECK_FALSE(sluice::parseEndpoint("10.244.1.5:8o").has_value());
    CHECK_FALSE(sluice::parseEndpoint(":80").has_value());
  }
}

TEST_SUITE("bpf_abi") {
  TEST_CASE("ABI structs have the sizes the BPF programs use") {
    CHECK(sizeof(sluice_pair_key) == 24);
    CHECK(offsetof(sluice_pair_key, src_ip4) == 8);
    CHECK(offsetof(sluice_pair_key, src_port) == 16);
    CHECK(sizeof(sluice_orig_dst) == 8);
    CHECK((SLUICE_MARK_INBOUND_APP & SLUICE_MARK_MASK) == SLUICE_MARK_MINE);
  }
}
