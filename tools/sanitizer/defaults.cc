// Sanitizer defaults compiled into every executable of a SLUICE_SANITIZE
// build (see CMakeLists.txt). They apply however the binary is started: by
// ctest, by a test fixture, or by the lab (agents, sluice-cni, control plane),
// whose environment may not carry ASAN_OPTIONS. Every report goes to
// SLUICE_SANITIZER_LOG_DIR, which tools/run-tests.sh checks at the end: a
// report from a child process is never lost in a log nobody reads.
// ASAN_OPTIONS / UBSAN_OPTIONS / LSAN_OPTIONS in the environment still
// override these.
#include <dlfcn.h>

#ifndef SLUICE_SANITIZER_LOG_DIR
#error "SLUICE_SANITIZER_LOG_DIR must name the report directory"
#endif
#ifndef SLUICE_LSAN_SUPPRESSIONS
#error "SLUICE_LSAN_SUPPRESSIONS must name the checked-in suppressions file"
#endif

extern "C" {

const char* __asan_default_options();
const char* __ubsan_default_options();
const char* __lsan_default_options();

const char* __asan_default_options() {
  return "detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:"
         "strict_string_checks=1:check_initialization_order=1:"
         "log_path=" SLUICE_SANITIZER_LOG_DIR "/asan";
}

const char* __ubsan_default_options() {
  return "print_stacktrace=1:halt_on_error=1";  // log path: ubsanReportPath below
}

const char* __lsan_default_options() { return "suppressions=" SLUICE_LSAN_SUPPRESSIONS; }
}

namespace {

// GCC links ASan and UBSan as two runtimes, each with its own report file.
// libubsan's own setup sets the report path through the dynamic symbol,
// which resolves to libasan's copy: UBSan would keep writing to stderr (a
// child's log nobody reads). Point libubsan's own copy at the directory.
__attribute__((constructor)) void ubsanReportPath() {
  void* ubsan = ::dlopen("libubsan.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (!ubsan) return;
  using SetPath = void (*)(const char*);
  if (auto set = reinterpret_cast<SetPath>(::dlsym(ubsan, "__sanitizer_set_report_path")))
    set(SLUICE_SANITIZER_LOG_DIR "/ubsan");
  ::dlclose(ubsan);
}

}  // namespace
