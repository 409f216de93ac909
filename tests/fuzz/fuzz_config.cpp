// fuzz_config: load_config_string on arbitrary bytes must either succeed or throw
// ConfigError -- no other exception type, no crash, no hang. A config that loads
// must survive to_yaml -> load_config_string unchanged (what --check-config prints
// is what runs).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>

#include "config.hpp"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_config invariant violated: %s\n%s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // YAML documents bigger than this are not configs; keep executions fast.
  if (size > 64 * 1024) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  upkeep::Config cfg;
  try {
    cfg = upkeep::load_config_string(text, "fuzz.yaml");
  } catch (const upkeep::ConfigError&) {
    return 0;  // the one allowed failure
  } catch (const std::exception& e) {
    fail("load_config_string threw something other than ConfigError",
         std::string(typeid(e).name()) + ": " + e.what());
  } catch (...) {
    fail("load_config_string threw a non-std exception", "");
  }

  std::string yaml;
  try {
    yaml = upkeep::to_yaml(cfg);
  } catch (const std::exception& e) {
    fail("to_yaml threw on a config that loaded", e.what());
  }
  upkeep::Config again;
  try {
    again = upkeep::load_config_string(yaml, "fuzz.yaml");
  } catch (const std::exception& e) {
    fail("to_yaml output does not load again", std::string(e.what()) + "\n--- to_yaml:\n" + yaml);
  }
  if (!(again == cfg)) {
    std::string yaml2;
    try {
      yaml2 = upkeep::to_yaml(again);
    } catch (...) {
    }
    fail("to_yaml round trip changed the config",
         "--- to_yaml(first):\n" + yaml + "--- to_yaml(reloaded):\n" + yaml2);
  }
  return 0;
}
