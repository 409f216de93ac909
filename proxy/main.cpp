// upkeep: flags, config, run. Exceptions end here, at start-up only.
#include <malloc.h>

#include <csignal>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "admin.hpp"
#include "config.hpp"
#include "intercept/ca_cli.hpp"
#include "intercept/ca_store.hpp"
#include "log.hpp"
#include "server.hpp"

#ifndef UPKEEP_VERSION
#define UPKEEP_VERSION "dev"
#endif

namespace {

void usage(std::ostream& out) {
  out << "usage: upkeep [--config FILE] [--listen ADDR:PORT] [--admin ADDR:PORT] "
         "[--log-level LEVEL]\n"
         "       upkeep --check-config FILE\n"
         "       upkeep --print-default-config\n"
         "       upkeep --version\n"
         "       upkeep healthcheck [--admin ADDR:PORT]\n"
         "       upkeep ca init|path|env|install [--config FILE]\n";
}

int fail(const std::string& msg) {
  std::cerr << "upkeep: " << msg << '\n';
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenSSL writes upstream TLS with write(2), which raises SIGPIPE when the origin
  // has reset the connection; the write's EPIPE is the error we handle.
  std::signal(SIGPIPE, SIG_IGN);
  // glibc's defaults return memory to the kernel eagerly: free() shrinks the heap
  // with brk once 128 KiB at its top is free (0.35 times per S1 h1 request, each
  // shrink paid back in page faults by the next exchange). Keep up to 8 MiB of free
  // heap. Setting it freezes the mmap threshold at 128 KiB, so raise that too:
  // blocks that size and larger come and go at request rate as well.
  mallopt(M_TRIM_THRESHOLD, 8 << 20);
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  std::vector<std::string> args(argv + 1, argv + argc);
  upkeep::Overrides overrides;
  std::string config_path;
  std::string check_path;
  bool check = false;
  bool healthcheck = false;
  std::string ca_verb;  // `upkeep ca VERB`
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string& out) -> bool {
      if (auto eq = a.find('='); eq != std::string::npos && a.rfind("--", 0) == 0) {
        out = a.substr(eq + 1);
        return true;
      }
      if (i + 1 >= args.size()) return false;
      out = args[++i];
      return true;
    };
    auto is = [&](const char* name) {
      return a == name || a.rfind(std::string(name) + "=", 0) == 0;
    };
    std::string v;
    if (a == "healthcheck" && i == 0) {
      healthcheck = true;
    } else if (a == "ca" && i == 0) {
      if (args.size() < 2 || args[1].rfind("--", 0) == 0) {
        return fail("ca: needs one of init, path, env, install (see upkeep --help)");
      }
      ca_verb = args[++i];
      if (ca_verb != "init" && ca_verb != "path" && ca_verb != "env" && ca_verb != "install") {
        return fail("ca: unknown command " + ca_verb + " (use init, path, env or install)");
      }
    } else if (a == "--version" || a == "-V") {
      std::cout << "upkeep " << UPKEEP_VERSION << '\n';
      return 0;
    } else if (a == "--help" || a == "-h") {
      usage(std::cout);
      return 0;
    } else if (a == "--print-default-config") {
      std::cout << upkeep::default_config_yaml();
      return 0;
    } else if (is("--check-config")) {
      if (!value(check_path)) return fail("--check-config: needs a file");
      check = true;
    } else if (is("--config")) {
      if (!value(config_path)) return fail("--config: needs a file");
    } else if (is("--listen")) {
      if (!value(v)) return fail("--listen: needs ADDR:PORT");
      overrides.listen = v;
    } else if (is("--admin")) {
      if (!value(v)) return fail("--admin: needs ADDR:PORT");
      overrides.admin = v;
    } else if (is("--log-level")) {
      if (!value(v)) return fail("--log-level: needs a level");
      overrides.log_level = v;
    } else {
      return fail("unknown argument: " + a + " (see upkeep --help)");
    }
  }

  upkeep::Config cfg;
  try {
    const std::string& path = check ? check_path : config_path;
    cfg = path.empty() ? upkeep::load_config_string(upkeep::default_config_yaml(), "<default>")
                       : upkeep::load_config_file(path);
    upkeep::apply_overrides(cfg, overrides);
  } catch (const upkeep::ConfigError& e) {
    return fail(e.what());
  }
  if (healthcheck) {
    if (!cfg.admin) return fail("healthcheck: the admin listener is disabled");
    return upkeep::healthcheck(*cfg.admin);
  }
  if (!ca_verb.empty())
    return upkeep::intercept::run_ca_command(ca_verb, cfg, std::cout, std::cerr);
  if (check) {
    // The CA is part of the config: a key others can read, or one that does not
    // match its certificate, fails the check as it would fail the start. Only an
    // own CA not created yet is left to the start (which creates it).
    if (cfg.access.connect == upkeep::ConnectMode::intercept &&
        (!cfg.intercept.ca_cert.empty() ||
         upkeep::intercept::CertificateAuthority::find_cert(cfg.intercept))) {
      try {
        upkeep::intercept::CertificateAuthority::load(cfg, false);
      } catch (const upkeep::ConfigError& e) {
        return fail(e.what());
      }
    }
    std::cout << upkeep::to_yaml(cfg);
    return 0;
  }
  upkeep::log::configure(cfg.log);
  return upkeep::run_server(std::move(cfg), config_path, overrides);
}
