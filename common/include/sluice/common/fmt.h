// fmt for Sluice code: include this, not <fmt/format.h>.
//
// fmt's formatting core (detail::vformat_to<char>, which every fmt::format,
// format_to and spdlog call reaches) is a template defined in <fmt/format.h>.
// Instantiated in each translation unit, it brought its own copy of the
// floating-point writer (GCC's local .isra clones, which the linker cannot
// merge): 36 copies, 0.55 MB of the agent's text, all of it resident. The
// declaration below keeps it out of every translation unit; common/src/
// fmt_core.cc instantiates it, and compiles fmt's non-template functions,
// once. Debian ships no static libfmt, and the agent maps no libfmt.so (it
// would bring libstdc++.so with it: see agent/CMakeLists.txt).
#pragma once

#include <fmt/format.h>

FMT_BEGIN_NAMESPACE
namespace detail {
extern template void vformat_to<char>(buffer<char>&, basic_string_view<char>,
                                      basic_format_args<FMT_BUFFER_CONTEXT(char)>, locale_ref);
}  // namespace detail
FMT_END_NAMESPACE
