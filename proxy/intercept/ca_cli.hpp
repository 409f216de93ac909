// `upkeep ca init|path|env|install` (SPEC.md "Trusting the CA"): how a person gets
// their programs to trust the interception CA. main.cpp parses the arguments and
// loads the config; these only act on it.
#pragma once

#include <ostream>
#include <string>
#include <string_view>

#include "config.hpp"
#include "intercept/ca_store.hpp"

namespace upkeep::intercept {

// Runs one verb; results on `out`, one line per error on `err`. Returns the exit
// code: 0, or 1 on any error (an unknown verb included).
//   init     creates the CA if missing and writes the trust bundle; prints the CA
//            certificate's path.
//   path     prints the CA certificate's path; 1 when there is none. Reads nothing
//            else and creates nothing.
//   env      `export` lines: http_proxy, https_proxy, HTTP_PROXY, HTTPS_PROXY (upkeep's
//            listen address; an unspecified 0.0.0.0 or :: as loopback), SSL_CERT_FILE,
//            REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE (the bundle) and NODE_EXTRA_CA_CERTS
//            (the CA alone: Node adds it to its own roots). Never creates a CA: it is
//            meant for `eval "$(upkeep ca env)"` in a shell profile, and a lookup
//            should not mint a ten-year trust anchor as a side effect. It (re)writes
//            the bundle when it is missing, since it prints its path.
//   install  copies the CA certificate to /usr/local/share/ca-certificates/
//            upkeep-ca.crt (0644) and runs update-ca-certificates; root only.
int run_ca_command(std::string_view verb, const Config& cfg, std::ostream& out, std::ostream& err);

// `value` as one POSIX shell word: single-quoted, each ' written as '\''.
std::string shell_quote(std::string_view value);

// The files `ca env` points clients at, (re)written by `ca init` and at every start:
// the trust bundle, and <state_dir>/wgetrc naming it (Debian's wget is built with
// GnuTLS and reads no CA variable, only a wgetrc's ca_certificate; WGETRC replaces
// ~/.wgetrc). Throws ConfigError.
void write_client_files(const CertificateAuthority& ca);
std::string wgetrc_path(const CertificateAuthority& ca);

// The `ca env` text for a CA.
std::string ca_env_exports(const Config& cfg, const CertificateAuthority& ca);

// install's work with its places as parameters, so tests can run it without
// touching the system's trust store: writes `anchors_dir`/upkeep-ca.crt, runs `tool`
// (no arguments), copies its output to `out`. Returns the exit code.
int install_ca_certificate(const CertificateAuthority& ca, const std::string& anchors_dir,
                           const std::string& tool, std::ostream& out, std::ostream& err);

}  // namespace upkeep::intercept
