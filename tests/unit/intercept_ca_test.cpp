// The interception CA, the leaf mint and its cache, and `upkeep ca`, against real
// OpenSSL: every certificate made here is also verified the way a client would.
#include <doctest/doctest.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <latch>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "config.hpp"
#include "intercept/ca_cli.hpp"
#include "intercept/ca_store.hpp"
#include "intercept/cert_cache.hpp"
#include "intercept/cert_mint.hpp"
#include "intercept/host_name.hpp"
#include "intercept/name_constraints.hpp"
#include "intercept/ossl.hpp"

using namespace upkeep;
using namespace upkeep::intercept;
using namespace std::chrono_literals;
using Clock = std::chrono::system_clock;

namespace {

// A directory of its own per test, removed afterwards.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/upkeep-ca-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// Sets (or unsets, with nullptr) an environment variable for one scope.
struct EnvVar {
  std::string name;
  std::optional<std::string> old;
  EnvVar(const char* n, const char* value) : name(n) {
    if (const char* v = std::getenv(n)) old = v;
    if (value) {
      ::setenv(n, value, 1);
    } else {
      ::unsetenv(n);
    }
  }
  ~EnvVar() {
    if (old) {
      ::setenv(name.c_str(), old->c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }
};

Config config_in(const TempDir& dir, std::vector<std::string> hosts = {"*"}) {
  Config cfg;
  cfg.intercept.state_dir = dir.path + "/state";
  cfg.intercept.hosts = std::move(hosts);
  return cfg;
}

template <class F>
std::string config_error_of(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

CertName name_of(std::string_view host) {
  auto n = normalize_host(host);
  REQUIRE(n.has_value());
  return *n;
}

// X509_verify_cert as a TLS client does it: the CA as the only trust anchor, the
// server purpose, the expected host name or IP address. X509_V_OK or the error.
int verify(const Leaf& leaf, X509* anchor, const std::string& expected, bool ip = false) {
  StorePtr store(X509_STORE_new());
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  REQUIRE(store);
  REQUIRE(ctx);
  REQUIRE(X509_STORE_add_cert(store.get(), anchor) == 1);
  REQUIRE(X509_STORE_CTX_init(ctx.get(), store.get(), leaf.cert(), leaf.chain()) == 1);
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  REQUIRE(X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER) == 1);
  // RFC 5280's rules that OpenSSL only checks when asked (key ids, a critical SAN
  // beside an empty subject, CA extensions): what strict clients such as Go enforce.
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_X509_STRICT);
  if (ip) {
    REQUIRE(X509_VERIFY_PARAM_set1_ip_asc(param, expected.c_str()) == 1);
  } else {
    REQUIRE(X509_VERIFY_PARAM_set1_host(param, expected.c_str(), expected.size()) == 1);
  }
  const int ok = X509_verify_cert(ctx.get());
  const int err = X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  if (ok == 1) return X509_V_OK;
  return err == X509_V_OK ? X509_V_ERR_UNSPECIFIED : err;
}

std::vector<unsigned char> serial_bytes(X509* x) {
  BnPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), nullptr));
  REQUIRE(bn);
  CHECK(!BN_is_negative(bn.get()));
  std::vector<unsigned char> out(static_cast<std::size_t>(BN_num_bytes(bn.get())));
  BN_bn2bin(bn.get(), out.data());
  return out;
}

bool ext_critical(X509* x, int nid) {
  const int i = X509_get_ext_by_NID(x, nid, -1);
  REQUIRE(i >= 0);
  return X509_EXTENSION_get_critical(X509_get_ext(x, i)) == 1;
}

std::string subject_entry(X509* x, int nid) {
  char buf[256] = {};
  const int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), nid, buf, sizeof buf);
  return n < 0 ? "" : std::string(buf, static_cast<std::size_t>(n));
}

void write_file(const std::string& path, const std::string& data, mode_t mode) {
  std::ofstream(path, std::ios::binary) << data;
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

std::string key_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  REQUIRE(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

// A CA made the way an administrator would with `openssl req -x509`: extensions as
// config text (fine here: the text is the test's own).
struct HandCa {
  std::string cert_path, key_path;
  X509Ptr cert;
  PkeyPtr key;
};
HandCa make_hand_ca(const TempDir& dir, const std::string& stem, PkeyPtr key,
                    const std::vector<std::pair<int, std::string>>& exts,
                    std::chrono::seconds not_after = std::chrono::hours(24 * 365)) {
  HandCa ca;
  ca.key = std::move(key);
  ca.cert.reset(X509_new());
  X509* x = ca.cert.get();
  X509_set_version(x, X509_VERSION_3);
  set_random_serial(x);
  X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(stem.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_gmtime_adj(X509_getm_notBefore(x), -86400);
  X509_gmtime_adj(X509_getm_notAfter(x), static_cast<long>(not_after.count()));
  X509_set_pubkey(x, ca.key.get());
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
  for (const auto& [nid, value] : exts) {
    X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str()));
    REQUIRE_MESSAGE(ext, value);
    REQUIRE(X509_add_ext(x, ext.get(), -1) == 1);
  }
  REQUIRE(X509_sign(x, ca.key.get(), EVP_sha256()) > 0);
  ca.cert_path = dir.path + "/" + stem + ".pem";
  ca.key_path = dir.path + "/" + stem + "-key.pem";
  write_file(ca.cert_path, pem_of(x), 0644);
  write_file(ca.key_path, key_pem(ca.key.get()), 0600);
  return ca;
}

PkeyPtr ec_key(const char* curve = "P-256") {
  PkeyPtr k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", curve));
  REQUIRE(k);
  return k;
}

const std::vector<std::pair<int, std::string>> kCaExts = {
    {NID_basic_constraints, "critical,CA:TRUE"},
    {NID_key_usage, "critical,keyCertSign,cRLSign"},
    {NID_subject_key_identifier, "hash"}};

Config config_with_ca(const TempDir& dir, const HandCa& ca,
                      std::vector<std::string> hosts = {"*"}) {
  Config cfg = config_in(dir, std::move(hosts));
  cfg.intercept.ca_cert = ca.cert_path;
  cfg.intercept.ca_key = ca.key_path;
  return cfg;
}

using SslCtxPtr = OsslPtr<SSL_CTX, SSL_CTX_free>;
using SslPtr = OsslPtr<SSL, SSL_free>;

// One TLS handshake in memory: a server presenting `leaf` the way the intercepting
// side will (SSL_use_cert_and_key), a client trusting only `anchor` and expecting
// `host`. Returns the client's verify result, or -1 if the handshake failed.
long handshake(const Leaf& leaf, X509* anchor, const std::string& host, int version) {
  SslCtxPtr sctx(SSL_CTX_new(TLS_server_method())), cctx(SSL_CTX_new(TLS_client_method()));
  REQUIRE(sctx);
  REQUIRE(cctx);
  for (SSL_CTX* c : {sctx.get(), cctx.get()}) {
    SSL_CTX_set_min_proto_version(c, version);
    SSL_CTX_set_max_proto_version(c, version);
  }
  REQUIRE(X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx.get()), anchor) == 1);
  SSL_CTX_set_verify(cctx.get(), SSL_VERIFY_PEER, nullptr);
  SslPtr server(SSL_new(sctx.get())), client(SSL_new(cctx.get()));
  REQUIRE(SSL_use_cert_and_key(server.get(), leaf.cert(), leaf.key(), leaf.chain(), 1) == 1);
  REQUIRE(SSL_set1_host(client.get(), host.c_str()) == 1);
  SSL_set_tlsext_host_name(client.get(), host.c_str());
  BIO *cb = nullptr, *sb = nullptr;
  REQUIRE(BIO_new_bio_pair(&cb, 0, &sb, 0) == 1);
  SSL_set_bio(client.get(), cb, cb);
  SSL_set_bio(server.get(), sb, sb);
  SSL_set_connect_state(client.get());
  SSL_set_accept_state(server.get());
  bool client_done = false, server_done = false;
  for (int i = 0; i < 50 && !(client_done && server_done); ++i) {
    if (!client_done) {
      const int r = SSL_do_handshake(client.get());
      if (r == 1)
        client_done = true;
      else if (SSL_get_error(client.get(), r) != SSL_ERROR_WANT_READ)
        break;
    }
    if (!server_done) {
      const int r = SSL_do_handshake(server.get());
      if (r == 1)
        server_done = true;
      else if (SSL_get_error(server.get(), r) != SSL_ERROR_WANT_READ)
        break;
    }
  }
  ERR_clear_error();
  const long result = SSL_get_verify_result(client.get());
  return client_done && server_done ? result : (result != X509_V_OK ? result : -1);
}

long rss_kib() {
  long size = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
  std::fclose(f);
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

}  // namespace

TEST_CASE("resolve_state_dir: the key, then $STATE_DIRECTORY, root, XDG, HOME") {
  InterceptSettings s;
  s.state_dir = "/srv/upkeep";
  CHECK(resolve_state_dir(s) == "/srv/upkeep");
  s.state_dir.clear();
  {
    EnvVar sd("STATE_DIRECTORY", "/var/lib/upkeep-a:/var/lib/upkeep-b");
    CHECK(resolve_state_dir(s) == "/var/lib/upkeep-a");
  }
  {
    EnvVar sd("STATE_DIRECTORY", "/run/x");
    CHECK(resolve_state_dir(s) == "/run/x");
  }
  EnvVar sd("STATE_DIRECTORY", nullptr);
  EnvVar xdg("XDG_STATE_HOME", "/home/u/.state");
  EnvVar home("HOME", "/home/u");
  if (::geteuid() == 0) {
    CHECK(resolve_state_dir(s) == "/var/lib/upkeep");
  } else {
    CHECK(resolve_state_dir(s) == "/home/u/.state/upkeep");
    {
      EnvVar rel("XDG_STATE_HOME", "relative/path");  // the XDG spec ignores these
      CHECK(resolve_state_dir(s) == "/home/u/.local/state/upkeep");
    }
    EnvVar none("XDG_STATE_HOME", nullptr);
    CHECK(resolve_state_dir(s) == "/home/u/.local/state/upkeep");
  }
}

TEST_CASE("resolve_state_dir as another user: XDG_STATE_HOME, then HOME" *
          doctest::skip(::geteuid() != 0)) {
  // Root always gets /var/lib/upkeep; the per-user rules are checked in a child that
  // drops to nobody, so this runs wherever the tests run as root (CI, containers).
  TempDir dir;
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
    InterceptSettings s;
    ::unsetenv("STATE_DIRECTORY");
    ::setenv("HOME", "/home/u", 1);
    ::setenv("XDG_STATE_HOME", "/home/u/.state", 1);
    if (resolve_state_dir(s) != "/home/u/.state/upkeep") ::_exit(11);
    ::setenv("XDG_STATE_HOME", "relative", 1);
    if (resolve_state_dir(s) != "/home/u/.local/state/upkeep") ::_exit(12);
    ::unsetenv("XDG_STATE_HOME");
    if (resolve_state_dir(s) != "/home/u/.local/state/upkeep") ::_exit(13);
    ::setenv("STATE_DIRECTORY", "/x/y", 1);
    if (resolve_state_dir(s) != "/x/y") ::_exit(14);
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("upkeep's own CA: created once with the fields and modes SPEC.md names") {
  TempDir dir;
  const Config cfg = config_in(dir);
  auto ca = CertificateAuthority::load(cfg, true);
  REQUIRE(ca);
  CHECK(ca->created());
  CHECK(ca->own());
  const std::string state = dir.path + "/state";
  CHECK(ca->state_dir() == state);
  CHECK(ca->cert_path() == state + "/ca.pem");
  CHECK(ca->bundle_path() == state + "/ca-bundle.pem");

  SUBCASE("files and modes") {
    CHECK(mode_of(state) == 0700);
    CHECK(mode_of(state + "/ca-key.pem") == 0600);
    CHECK(mode_of(state + "/ca.pem") == 0644);
    // Nothing else: no temporary file was left behind.
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(state)) {
      names.insert(e.path().filename().string());
    }
    CHECK(names == std::set<std::string>{"ca.pem", "ca-key.pem"});
  }

  SUBCASE("key: ECDSA P-256") {
    CHECK(EVP_PKEY_get_base_id(ca->key()) == EVP_PKEY_EC);
    char group[64] = {};
    size_t len = 0;
    REQUIRE(EVP_PKEY_get_group_name(ca->key(), group, sizeof group, &len) == 1);
    CHECK(std::string(group) == "prime256v1");
  }

  SUBCASE("extensions") {
    X509* x = ca->cert();
    CHECK(X509_get_version(x) == X509_VERSION_3);
    int crit = -1;
    BasicConstraintsPtr bc(static_cast<BASIC_CONSTRAINTS*>(
        X509_get_ext_d2i(x, NID_basic_constraints, &crit, nullptr)));
    REQUIRE(bc);
    CHECK(crit == 1);
    CHECK(bc->ca != 0);
    REQUIRE(bc->pathlen != nullptr);
    CHECK(ASN1_INTEGER_get(bc->pathlen) == 0);
    CHECK(X509_get_key_usage(x) == (KU_KEY_CERT_SIGN | KU_CRL_SIGN));
    CHECK(ext_critical(x, NID_key_usage));
    const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(x);
    REQUIRE(ski != nullptr);
    const auto expected = key_identifier(ca->key());
    CHECK(std::vector<unsigned char>(ASN1_STRING_get0_data(ski),
                                     ASN1_STRING_get0_data(ski) + ASN1_STRING_length(ski)) ==
          expected);
    CHECK(ca->subject_key_id() == expected);
    CHECK(X509_get_ext_by_NID(x, NID_name_constraints, -1) < 0);  // hosts ["*"]
    CHECK(X509_get_signature_nid(x) == NID_ecdsa_with_SHA256);
    const auto serial = serial_bytes(x);
    CHECK(serial.size() >= 8);
    CHECK(serial.size() <= 16);
  }

  SUBCASE("subject: upkeep, the host and the date") {
    X509* x = ca->cert();
    CHECK(subject_entry(x, NID_organizationName) == "upkeep");
    const std::string cn = subject_entry(x, NID_commonName);
    CHECK(cn.starts_with("upkeep interception CA ("));
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    CHECK(contains(cn, std::string(host).substr(0, 10)));
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    char date[16];
    std::strftime(date, sizeof date, "%Y-%m-%d", &tm);
    CHECK(contains(cn, date));
    CHECK(cn.size() <= 64);
    CHECK(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)) == 0);
  }

  SUBCASE("valid 10 years, backdated a little") {
    const auto nb = to_time_point(X509_get0_notBefore(ca->cert()));
    const auto na = to_time_point(X509_get0_notAfter(ca->cert()));
    const auto now = Clock::now();
    CHECK(nb < now);
    CHECK(nb > now - 48h);
    CHECK(na - now > 24h * 3649);
    CHECK(na - now < 24h * 3651);
    CHECK(ca->not_after() == na);
  }

  SUBCASE("a second load reuses it and overwrites nothing") {
    struct stat before {};
    REQUIRE(::stat((state + "/ca-key.pem").c_str(), &before) == 0);
    const std::string key_text = read_text(state + "/ca-key.pem");
    for (bool create : {true, false}) {
      auto again = CertificateAuthority::load(cfg, create);
      CHECK(!again->created());
      CHECK(X509_cmp(again->cert(), ca->cert()) == 0);
      CHECK(EVP_PKEY_eq(again->key(), ca->key()) == 1);
    }
    struct stat after {};
    REQUIRE(::stat((state + "/ca-key.pem").c_str(), &after) == 0);
    CHECK(after.st_ino == before.st_ino);
    CHECK(after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
    CHECK(read_text(state + "/ca-key.pem") == key_text);
  }

  SUBCASE("the trust bundle: system roots, then the CA") {
    ca->write_trust_bundle();
    CHECK(mode_of(ca->bundle_path()) == 0644);
    const std::string bundle = read_text(ca->bundle_path());
    CHECK(bundle.ends_with(pem_of(ca->cert())));
    const std::string roots = read_text(X509_get_default_cert_file());
    if (!roots.empty()) {
      CHECK(bundle.starts_with(roots));
      MESSAGE("bundle: " << bundle.size() << " bytes, system roots " << roots.size());
    }
    // Rewritten in place: same content, still one copy of the CA, no stray temp file.
    ca->write_trust_bundle();
    const std::string again = read_text(ca->bundle_path());
    CHECK(again == bundle);
    std::size_t dir_entries = 0;
    for (const auto& e : std::filesystem::directory_iterator(state)) {
      (void)e;
      ++dir_entries;
    }
    CHECK(dir_entries == 3);
  }
}

TEST_CASE("own CA: none and create false tells to run `upkeep ca init`") {
  TempDir dir;
  const std::string err =
      config_error_of([&] { CertificateAuthority::load(config_in(dir), false); });
  CHECK(contains(err, "upkeep ca init"));
  CHECK(contains(err, "intercept.state_dir"));
  CHECK(!std::filesystem::exists(dir.path + "/state/ca-key.pem"));
  CHECK(!CertificateAuthority::find_cert(config_in(dir).intercept));
}

TEST_CASE("own CA: refused when the key is readable by group or others") {
  TempDir dir;
  const Config cfg = config_in(dir);
  CertificateAuthority::load(cfg, true);
  const std::string key = dir.path + "/state/ca-key.pem";
  for (mode_t m : {0640, 0604, 0620}) {
    REQUIRE(::chmod(key.c_str(), m) == 0);
    const std::string err = config_error_of([&] { CertificateAuthority::load(cfg, true); });
    CHECK(err.starts_with("intercept.ca_key: "));
    CHECK(contains(err, key));
    CHECK(contains(err, "chmod 600"));
  }
  REQUIRE(::chmod(key.c_str(), 0600) == 0);
  CHECK(config_error_of([&] { CertificateAuthority::load(cfg, true); }).empty());
}

TEST_CASE("own CA: the state directory must not be writable by others; readable is a warning") {
  TempDir dir;
  const Config cfg = config_in(dir);
  CertificateAuthority::load(cfg, true);
  const std::string state = dir.path + "/state";
  REQUIRE(::chmod(state.c_str(), 0770) == 0);
  const std::string err = config_error_of([&] { CertificateAuthority::load(cfg, true); });
  CHECK(err.starts_with("intercept.state_dir: "));
  CHECK(contains(err, "writable"));
  REQUIRE(::chmod(state.c_str(), 0755) == 0);
  auto ca = CertificateAuthority::load(cfg, true);
  REQUIRE(ca->warnings().size() == 1);
  CHECK(contains(ca->warnings()[0], "0755"));
  REQUIRE(::chmod(state.c_str(), 0700) == 0);
  CHECK(CertificateAuthority::load(cfg, true)->warnings().empty());
}

TEST_CASE("own CA: half a CA (a key without its certificate) is reported, never replaced") {
  TempDir dir;
  const Config cfg = config_in(dir);
  CertificateAuthority::load(cfg, true);
  const std::string state = dir.path + "/state";
  const std::string key_text = read_text(state + "/ca-key.pem");
  REQUIRE(::unlink((state + "/ca.pem").c_str()) == 0);
  const std::string err = config_error_of([&] { CertificateAuthority::load(cfg, true); });
  CHECK(contains(err, "ca.pem is missing"));
  CHECK(read_text(state + "/ca-key.pem") == key_text);
  CHECK(!std::filesystem::exists(state + "/ca.pem"));
}

TEST_CASE("own CA: concurrent first starts make one CA") {
  TempDir dir;
  const Config cfg = config_in(dir);
  std::vector<std::shared_ptr<const CertificateAuthority>> cas(4);
  std::latch go(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      cas[static_cast<std::size_t>(i)] = CertificateAuthority::load(cfg, true);
    });
  }
  for (auto& t : threads)
    t.join();
  int created = 0;
  for (const auto& c : cas) {
    REQUIRE(c);
    created += c->created() ? 1 : 0;
    CHECK(X509_cmp(c->cert(), cas[0]->cert()) == 0);
  }
  CHECK(created == 1);
}

TEST_CASE("a given CA: RSA works, and the checks name the key at fault") {
  TempDir dir;
  PkeyPtr rsa(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048)));
  REQUIRE(rsa);
  HandCa hand = make_hand_ca(dir, "rsa-ca", std::move(rsa), kCaExts);

  SUBCASE("RSA CA: loads, mints, verifies") {
    auto ca = CertificateAuthority::load(config_with_ca(dir, hand), false);
    CHECK(!ca->own());
    CHECK(ca->cert_path() == hand.cert_path);
    CHECK(EVP_PKEY_get_base_id(ca->key()) == EVP_PKEY_RSA);
    LeafMinter minter(ca);
    auto leaf = minter.mint(name_of("rsa.example.com"));
    CHECK(X509_get_signature_nid(leaf->cert()) == NID_sha256WithRSAEncryption);
    CHECK(verify(*leaf, ca->cert(), "rsa.example.com") == X509_V_OK);
    // The leaf key stays ECDSA P-256 under an RSA CA.
    CHECK(EVP_PKEY_get_base_id(leaf->key()) == EVP_PKEY_EC);
  }

  SUBCASE("a key not matching its certificate") {
    HandCa other = make_hand_ca(dir, "other-ca", ec_key(), kCaExts);
    Config cfg = config_with_ca(dir, hand);
    cfg.intercept.ca_key = other.key_path;
    const std::string err = config_error_of([&] { CertificateAuthority::load(cfg, false); });
    CHECK(err.starts_with("intercept.ca_key: "));
    CHECK(contains(err, "does not match"));
  }

  SUBCASE("a group-readable key") {
    REQUIRE(::chmod(hand.key_path.c_str(), 0640) == 0);
    const std::string err =
        config_error_of([&] { CertificateAuthority::load(config_with_ca(dir, hand), false); });
    CHECK(err ==
          "intercept.ca_key: " + hand.key_path + " is readable by group or others (chmod 600)");
  }

  SUBCASE("unreadable files") {
    Config cfg = config_with_ca(dir, hand);
    cfg.intercept.ca_key = dir.path + "/missing-key.pem";
    CHECK(config_error_of([&] {
            CertificateAuthority::load(cfg, false);
          }).starts_with("intercept.ca_key: " + dir.path + "/missing-key.pem: cannot open"));
    cfg = config_with_ca(dir, hand);
    cfg.intercept.ca_cert = dir.path + "/missing.pem";
    CHECK(config_error_of([&] {
            CertificateAuthority::load(cfg, false);
          }).starts_with("intercept.ca_cert: "));
    write_file(dir.path + "/garbage.pem", "not a certificate\n", 0644);
    cfg.intercept.ca_cert = dir.path + "/garbage.pem";
    CHECK(contains(config_error_of([&] { CertificateAuthority::load(cfg, false); }),
                   "no PEM certificate"));
  }

  SUBCASE("not a CA, or not allowed to sign") {
    HandCa leafish =
        make_hand_ca(dir, "not-ca", ec_key(), {{NID_basic_constraints, "critical,CA:FALSE"}});
    CHECK(contains(
        config_error_of([&] { CertificateAuthority::load(config_with_ca(dir, leafish), false); }),
        "not a CA certificate"));
    HandCa no_sign = make_hand_ca(dir, "no-sign", ec_key(),
                                  {{NID_basic_constraints, "critical,CA:TRUE"},
                                   {NID_key_usage, "critical,digitalSignature"}});
    CHECK(contains(
        config_error_of([&] { CertificateAuthority::load(config_with_ca(dir, no_sign), false); }),
        "keyCertSign"));
  }

  SUBCASE("an expired CA") {
    HandCa old = make_hand_ca(dir, "old", ec_key(), kCaExts, std::chrono::seconds(-3600));
    CHECK(contains(
        config_error_of([&] { CertificateAuthority::load(config_with_ca(dir, old), false); }),
        "expired"));
  }
}

TEST_CASE("leaf certificates: the fields clients check") {
  TempDir dir;
  auto ca = CertificateAuthority::load(config_in(dir), true);
  LeafMinter minter(ca);
  const auto now = Clock::now();

  SUBCASE("a DNS name") {
    auto leaf = minter.mint(name_of("API.Example.COM."));
    X509* x = leaf->cert();
    CHECK(leaf->name().name == "api.example.com");
    CHECK(X509_get_version(x) == X509_VERSION_3);
    int crit = -1;
    GeneralNamesPtr san(
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, &crit, nullptr)));
    REQUIRE(san);
    CHECK(crit == 0);  // a subject CN is there
    REQUIRE(sk_GENERAL_NAME_num(san.get()) == 1);
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(san.get(), 0);
    REQUIRE(gn->type == GEN_DNS);
    CHECK(std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(gn->d.dNSName)),
                      static_cast<std::size_t>(ASN1_STRING_length(gn->d.dNSName))) ==
          "api.example.com");
    CHECK(subject_entry(x, NID_commonName) == "api.example.com");
    CHECK(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca->cert())) == 0);

    const auto nb = to_time_point(X509_get0_notBefore(x));
    const auto na = to_time_point(X509_get0_notAfter(x));
    CHECK(nb > now - 1h - 5s);
    CHECK(nb < now - 1h + 5s);
    CHECK(na - nb <= 24h * 30 + 1h);
    CHECK(na > now + 24h * 29);
    CHECK(leaf->not_before() == nb);
    CHECK(leaf->not_after() == na);

    CHECK((X509_get_extension_flags(x) & EXFLAG_XKUSAGE) != 0);
    CHECK(X509_get_extended_key_usage(x) == XKU_SSL_SERVER);
    CHECK(X509_get_key_usage(x) == KU_DIGITAL_SIGNATURE);
    CHECK(ext_critical(x, NID_key_usage));
    CHECK(X509_check_ca(x) == 0);
    BasicConstraintsPtr bc(static_cast<BASIC_CONSTRAINTS*>(
        X509_get_ext_d2i(x, NID_basic_constraints, nullptr, nullptr)));
    REQUIRE(bc);
    CHECK(bc->ca == 0);

    const ASN1_OCTET_STRING* akid = X509_get0_authority_key_id(x);
    REQUIRE(akid != nullptr);
    CHECK(std::vector<unsigned char>(ASN1_STRING_get0_data(akid),
                                     ASN1_STRING_get0_data(akid) + ASN1_STRING_length(akid)) ==
          ca->subject_key_id());
    // keyid only: no issuer name and serial in the authority key id.
    AkidPtr akid_ext(static_cast<AUTHORITY_KEYID*>(
        X509_get_ext_d2i(x, NID_authority_key_identifier, nullptr, nullptr)));
    REQUIRE(akid_ext);
    CHECK(akid_ext->issuer == nullptr);
    CHECK(akid_ext->serial == nullptr);
    CHECK(X509_get0_subject_key_id(x) != nullptr);

    CHECK(EVP_PKEY_eq(X509_get0_pubkey(x), ca->key()) != 1);
    CHECK(EVP_PKEY_eq(X509_get0_pubkey(x), leaf->key()) == 1);
    CHECK(EVP_PKEY_get_base_id(leaf->key()) == EVP_PKEY_EC);
    CHECK(X509_get_signature_nid(x) == NID_ecdsa_with_SHA256);
    REQUIRE(sk_X509_num(leaf->chain()) == 1);
    CHECK(X509_cmp(sk_X509_value(leaf->chain(), 0), ca->cert()) == 0);
    CHECK(X509_check_private_key(x, leaf->key()) == 1);
  }

  SUBCASE("an IP address: one iPAddress entry, no CN, so the SAN is critical") {
    for (const char* ip : {"127.0.0.1", "2001:db8::1"}) {
      auto leaf = minter.mint(name_of(ip));
      X509* x = leaf->cert();
      int crit = -1;
      GeneralNamesPtr san(
          static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, &crit, nullptr)));
      REQUIRE(san);
      CHECK(crit == 1);
      REQUIRE(sk_GENERAL_NAME_num(san.get()) == 1);
      const GENERAL_NAME* gn = sk_GENERAL_NAME_value(san.get(), 0);
      CHECK(gn->type == GEN_IPADD);
      CHECK(ASN1_STRING_length(gn->d.iPAddress) == (contains(ip, ":") ? 16 : 4));
      CHECK(X509_NAME_entry_count(X509_get_subject_name(x)) == 0);
      CHECK(verify(*leaf, ca->cert(), ip, true) == X509_V_OK);
    }
  }

  SUBCASE("a name longer than 64 octets: no CN, critical SAN, still verifies") {
    const std::string host = std::string(60, 'a') + ".example.com";
    auto leaf = minter.mint(name_of(host));
    CHECK(X509_NAME_entry_count(X509_get_subject_name(leaf->cert())) == 0);
    CHECK(ext_critical(leaf->cert(), NID_subject_alt_name));
    CHECK(verify(*leaf, ca->cert(), host) == X509_V_OK);
  }

  SUBCASE("one leaf key for all leaves, never the CA's") {
    auto a = minter.mint(name_of("a.example.com"));
    auto b = minter.mint(name_of("b.example.com"));
    CHECK(EVP_PKEY_eq(a->key(), b->key()) == 1);
    CHECK(EVP_PKEY_eq(a->key(), ca->key()) != 1);
    LeafMinter other(ca);
    CHECK(EVP_PKEY_eq(other.leaf_key(), minter.leaf_key()) != 1);
  }

  SUBCASE("never past the CA's notAfter") {
    TempDir d2;
    HandCa short_ca = make_hand_ca(d2, "short", ec_key(), kCaExts, std::chrono::hours(24 * 3));
    auto sca = CertificateAuthority::load(config_with_ca(d2, short_ca), false);
    CHECK(sca->warnings().size() == 1);  // expires within 30 days
    LeafMinter sm(sca);
    auto leaf = sm.mint(name_of("short.example.com"));
    CHECK(leaf->not_after() == sca->not_after());
    CHECK(verify(*leaf, sca->cert(), "short.example.com") == X509_V_OK);
  }
}

TEST_CASE("leaves work in real handshakes (SSL_use_cert_and_key), TLS 1.2 and 1.3") {
  TempDir dir;
  auto ca = CertificateAuthority::load(config_in(dir), true);
  LeafMinter minter(ca);
  auto leaf = minter.mint(name_of("tls.example.com"));
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CHECK(handshake(*leaf, ca->cert(), "tls.example.com", version) == X509_V_OK);
    CHECK(handshake(*leaf, ca->cert(), "other.example.com", version) ==
          X509_V_ERR_HOSTNAME_MISMATCH);
  }
  TempDir other;
  auto foreign = CertificateAuthority::load(config_in(other), true);
  CHECK(handshake(*leaf, foreign->cert(), "tls.example.com", TLS1_3_VERSION) != X509_V_OK);

  SUBCASE("under an RSA CA") {
    PkeyPtr rsa(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048)));
    HandCa hand = make_hand_ca(dir, "rsa-ca", std::move(rsa), kCaExts);
    auto rca = CertificateAuthority::load(config_with_ca(dir, hand), false);
    LeafMinter rm(rca);
    CHECK(handshake(*rm.mint(name_of("rsa.example.com")), rca->cert(), "rsa.example.com",
                    TLS1_3_VERSION) == X509_V_OK);
  }

  SUBCASE("many threads, shared leaves and one cache") {
    CertCache cache(std::make_shared<LeafMinter>(ca), 8);
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 10; ++i) {
          const std::string host = "h" + std::to_string((t + i) % 3) + ".example.com";
          auto l = cache.get(*normalize_host(host));
          if (handshake(*l, ca->cert(), host, i % 2 ? TLS1_3_VERSION : TLS1_2_VERSION) ==
              X509_V_OK) {
            ++ok;
          }
        }
      });
    }
    for (auto& th : threads)
      th.join();
    CHECK(ok == 40);
    CHECK(cache.minted_total() == 3);
  }
}

TEST_CASE("leaf serials: random, positive, unique over 100 mints") {
  TempDir dir;
  LeafMinter minter(CertificateAuthority::load(config_in(dir), true));
  std::set<std::vector<unsigned char>> serials;
  for (int i = 0; i < 100; ++i) {
    auto leaf = minter.mint(name_of("same.example.com"));
    const auto s = serial_bytes(leaf->cert());
    CHECK(!s.empty());
    CHECK(s.size() <= 16);
    serials.insert(s);
  }
  CHECK(serials.size() == 100);
}

TEST_CASE("every leaf verifies against the CA, for its own name only") {
  TempDir dir;
  auto ca = CertificateAuthority::load(config_in(dir), true);
  LeafMinter minter(ca);
  for (const char* host :
       {"example.com", "a.b.c.example.org", "localhost", "xn--bcher-kva.de", "x-1.test"}) {
    auto leaf = minter.mint(name_of(host));
    CHECK_MESSAGE(verify(*leaf, ca->cert(), host) == X509_V_OK, host);
    CHECK(verify(*leaf, ca->cert(), std::string("other.") + host) == X509_V_ERR_HOSTNAME_MISMATCH);
  }
  for (const char* ip : {"10.1.2.3", "::1", "fe80::1"}) {
    auto leaf = minter.mint(name_of(ip));
    CHECK_MESSAGE(verify(*leaf, ca->cert(), ip, true) == X509_V_OK, ip);
    CHECK(verify(*leaf, ca->cert(), "10.9.9.9", true) == X509_V_ERR_IP_ADDRESS_MISMATCH);
  }
  // Another install's CA is no anchor for these leaves.
  TempDir other;
  auto foreign = CertificateAuthority::load(config_in(other), true);
  auto leaf = minter.mint(name_of("example.com"));
  CHECK(verify(*leaf, foreign->cert(), "example.com") != X509_V_OK);
}

TEST_CASE("nameConstraints on a CA made for listed hosts, enforced by the verifier") {
  TempDir dir;
  const Config cfg = config_in(dir, {"api.example.com", "*.internal.test", "10.0.0.5"});
  auto ca = CertificateAuthority::load(cfg, true);
  X509* x = ca->cert();
  REQUIRE(X509_get_ext_by_NID(x, NID_name_constraints, -1) >= 0);
  CHECK(ext_critical(x, NID_name_constraints));
  const NameConstraints& nc = ca->name_constraints();
  CHECK(nc.present);
  CHECK(nc.permitted_dns == std::vector<std::string>{"api.example.com", ".internal.test"});
  CHECK(nc.excluded_dns == std::vector<std::string>{".api.example.com"});
  REQUIRE(nc.permitted_ip.size() == 1);
  CHECK(nc.excluded_ip.empty());
  MESSAGE("constraints: " << nc.describe());

  LeafMinter minter(ca);
  for (const char* host : {"api.example.com", "a.internal.test", "a.b.internal.test"}) {
    CHECK(ca->permits(name_of(host)));
    CHECK_MESSAGE(verify(*minter.mint(name_of(host)), x, host) == X509_V_OK, host);
  }
  CHECK(verify(*minter.mint(name_of("10.0.0.5")), x, "10.0.0.5", true) == X509_V_OK);

  // Outside: mint() refuses, and a leaf signed anyway does not verify.
  const std::vector<std::pair<const char*, int>> outside = {
      {"evil.com", X509_V_ERR_PERMITTED_VIOLATION},
      {"example.com", X509_V_ERR_PERMITTED_VIOLATION},
      {"internal.test", X509_V_ERR_PERMITTED_VIOLATION},  // "*.d" is names under d only
      {"x.api.example.com", X509_V_ERR_EXCLUDED_VIOLATION},
      {"badapi.example.com", X509_V_ERR_PERMITTED_VIOLATION},
      {"10.0.0.6", X509_V_ERR_PERMITTED_VIOLATION},
      {"::1", X509_V_ERR_PERMITTED_VIOLATION},  // the v4 subtree never matches v6
  };
  for (const auto& [host, expected] : outside) {
    const CertName n = name_of(host);
    CHECK_MESSAGE(!ca->permits(n), host);
    CHECK_THROWS_AS(minter.mint(n), MintError);
    auto forced = minter.mint_ignoring_constraints_for_test(n);
    CHECK_MESSAGE(verify(*forced, x, host, n.is_ip) == expected, host);
  }
}

TEST_CASE("nameConstraints without an IP literal in hosts exclude every address") {
  TempDir dir;
  auto ca = CertificateAuthority::load(config_in(dir, {"*.example.com"}), true);
  const auto& nc = ca->name_constraints();
  CHECK(nc.permitted_ip.empty());
  CHECK(nc.excluded_ip.size() == 2);
  LeafMinter minter(ca);
  for (const char* ip : {"127.0.0.1", "::1"}) {
    CHECK(!ca->permits(name_of(ip)));
    auto forced = minter.mint_ignoring_constraints_for_test(name_of(ip));
    CHECK(verify(*forced, ca->cert(), ip, true) == X509_V_ERR_EXCLUDED_VIOLATION);
  }
}

TEST_CASE("OpenSSL's nameConstraints forms, as upkeep relies on them") {
  TempDir dir;
  // "example.com": the name itself and every name under it. ".example.com": names
  // under it only. An IP leaf carrying a CN that looks like a host name is checked
  // against the DNS constraints, which is why upkeep's IP leaves carry no CN.
  HandCa plain =
      make_hand_ca(dir, "plain", ec_key(),
                   {{NID_basic_constraints, "critical,CA:TRUE"},
                    {NID_key_usage, "critical,keyCertSign"},
                    {NID_subject_key_identifier, "hash"},
                    {NID_name_constraints,
                     "critical,permitted;DNS:example.com,permitted;IP:10.0.0.0/255.0.0.0"}});
  HandCa dotted = make_hand_ca(dir, "dotted", ec_key(),
                               {{NID_basic_constraints, "critical,CA:TRUE"},
                                {NID_key_usage, "critical,keyCertSign"},
                                {NID_subject_key_identifier, "hash"},
                                {NID_name_constraints, "critical,permitted;DNS:.example.com"}});
  auto plain_ca = CertificateAuthority::load(config_with_ca(dir, plain, {"*.example.com"}), false);
  auto dotted_ca =
      CertificateAuthority::load(config_with_ca(dir, dotted, {"*.example.com"}), false);
  LeafMinter pm(plain_ca), dm(dotted_ca);
  struct Row {
    const char* host;
    bool plain_ok, dotted_ok;
  };
  for (const Row& r : {Row{"example.com", true, false}, Row{"a.example.com", true, true},
                       Row{"a.b.example.com", true, true}, Row{"badexample.com", false, false},
                       Row{"example.com.evil.net", false, false}}) {
    const CertName n = name_of(r.host);
    CHECK_MESSAGE(plain_ca->permits(n) == r.plain_ok, r.host);
    CHECK_MESSAGE(dotted_ca->permits(n) == r.dotted_ok, r.host);
    CHECK_MESSAGE((verify(*pm.mint_ignoring_constraints_for_test(n), plain_ca->cert(), r.host) ==
                   X509_V_OK) == r.plain_ok,
                  r.host);
    CHECK_MESSAGE((verify(*dm.mint_ignoring_constraints_for_test(n), dotted_ca->cert(), r.host) ==
                   X509_V_OK) == r.dotted_ok,
                  r.host);
  }
  // permits_pattern agrees: "*.example.com" fits both; "example.com" only the plain one.
  CHECK(plain_ca->name_constraints().permits_pattern("example.com"));
  CHECK(!dotted_ca->name_constraints().permits_pattern("example.com"));
  CHECK(!plain_ca->name_constraints().permits_pattern("*.com"));

  // The CN check: re-sign an IP leaf with CN=10.1.2.3 under the plain CA (10/8 permitted).
  auto ip_leaf = pm.mint(name_of("10.1.2.3"));
  CHECK(verify(*ip_leaf, plain_ca->cert(), "10.1.2.3", true) == X509_V_OK);
  X509Ptr with_cn(X509_dup(ip_leaf->cert()));
  X509_NAME_add_entry_by_NID(X509_get_subject_name(with_cn.get()), NID_commonName, MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("10.1.2.3"), -1, -1, 0);
  REQUIRE(X509_sign(with_cn.get(), plain_ca->key(), EVP_sha256()) > 0);
  EVP_PKEY_up_ref(ip_leaf->key());
  Leaf cn_leaf(std::move(with_cn), PkeyPtr(ip_leaf->key()),
               std::shared_ptr<X509Stack>(X509_chain_up_ref(ip_leaf->chain()), free_x509_stack),
               ip_leaf->name(), ip_leaf->not_before(), ip_leaf->not_after());
  CHECK(verify(cn_leaf, plain_ca->cert(), "10.1.2.3", true) == X509_V_ERR_PERMITTED_VIOLATION);
}

TEST_CASE("a config whose hosts are outside the CA's constraints is refused") {
  TempDir dir;
  const Config made = config_in(dir, {"api.example.com", "*.internal.test"});
  CertificateAuthority::load(made, true);
  SUBCASE("a subset is fine") {
    CHECK(config_error_of([&] {
            CertificateAuthority::load(config_in(dir, {"a.internal.test", "*.x.internal.test"}),
                                       false);
          }).empty());
  }
  SUBCASE("other names") {
    for (const char* host : {"other.example.com", "*.example.com", "internal.test", "10.0.0.1",
                             "sub.api.example.com"}) {
      const std::string err = config_error_of([&] {
        CertificateAuthority::load(config_in(dir, {"api.example.com", host}), false);
      });
      CHECK_MESSAGE(err.starts_with(std::string("intercept.hosts: ") + host +
                                    " is outside the CA's nameConstraints"),
                    err);
      CHECK(contains(err, "remove "));
    }
  }
  SUBCASE("hosts [\"*\"] under a constrained CA") {
    const std::string err =
        config_error_of([&] { CertificateAuthority::load(config_in(dir, {"*"}), true); });
    CHECK(err.starts_with("intercept.hosts: * is outside"));
  }
  SUBCASE("an exact host whose subdomains another pattern needs is not excluded") {
    TempDir d2;
    auto ca = CertificateAuthority::load(
        config_in(d2, {"example.com", "*.api.example.com", "www.example.com"}), true);
    CHECK(ca->name_constraints().excluded_dns == std::vector<std::string>{".www.example.com"});
    LeafMinter m(ca);
    CHECK(verify(*m.mint(name_of("x.api.example.com")), ca->cert(), "x.api.example.com") ==
          X509_V_OK);
    CHECK(verify(*m.mint(name_of("example.com")), ca->cert(), "example.com") == X509_V_OK);
  }
}

TEST_CASE("names that are not host names mint nothing") {
  TempDir dir;
  auto ca = CertificateAuthority::load(config_in(dir), true);
  LeafMinter minter(ca);
  CertCache cache(std::make_shared<LeafMinter>(ca), 10);
  const std::string nul("a.com\0evil.com", 14);
  for (const std::string& bad :
       {std::string("a.com,DNS:evil.com"), nul, std::string("*.a.com"), std::string("a com"),
        std::string(""), std::string("a.com/x"), std::string("-a.com"), std::string("a..com"),
        std::string("[::1]"), std::string(300, 'a'), std::string("a.com\r\nX: y"),
        std::string("caf\xc3\xa9.com")}) {
    CHECK_MESSAGE(!normalize_host(bad), bad);
    // Also when a caller builds the CertName by hand, bypassing normalize_host.
    CHECK_THROWS_AS(minter.mint(CertName{bad, false}), MintError);
    CHECK_THROWS_AS(minter.mint(CertName{bad, true}), MintError);
    CHECK_THROWS_AS(cache.get(CertName{bad, false}), MintError);
  }
  // Not normalized: upper case, a trailing dot, a non-canonical IP.
  CHECK_THROWS_AS(minter.mint(CertName{"A.com", false}), MintError);
  CHECK_THROWS_AS(minter.mint(CertName{"a.com.", false}), MintError);
  CHECK_THROWS_AS(minter.mint(CertName{"::0:1", true}), MintError);
  CHECK_THROWS_AS(minter.mint(CertName{"1.2.3.4", false}), MintError);
  CHECK(cache.size() == 0);
  CHECK(cache.minted_total() == 0);
}

TEST_CASE("cert cache: one leaf per name, LRU-bounded, one mint per name under concurrency") {
  TempDir dir;
  auto ca = CertificateAuthority::load(config_in(dir), true);
  auto minter = std::make_shared<LeafMinter>(ca);

  SUBCASE("the same name returns the same leaf") {
    CertCache cache(minter, 16);
    auto a = cache.get(name_of("a.example.com"));
    auto b = cache.get(name_of("a.example.com"));
    CHECK(a == b);
    CHECK(cache.get(name_of("b.example.com")) != a);
    CHECK(cache.minted_total() == 2);
    CHECK(cache.size() == 2);
  }

  SUBCASE("LRU: bounded over 2,000 names, recently used kept") {
    CertCache cache(minter, 100);
    auto keep = cache.get(name_of("keep.example.com"));
    for (int i = 0; i < 2000; ++i) {
      cache.get(name_of("h" + std::to_string(i) + ".example.com"));
      if (i % 50 == 0) CHECK(cache.get(name_of("keep.example.com")) == keep);
      CHECK(cache.size() <= 100);
    }
    CHECK(cache.size() == 100);
    CHECK(cache.minted_total() == 2001);
    CHECK(cache.get(name_of("keep.example.com")) == keep);
    cache.get(name_of("h0.example.com"));  // evicted long ago: minted again
    CHECK(cache.minted_total() == 2002);
  }

  SUBCASE("8 threads asking for one new name share one mint") {
    // A slow minter clock widens the window in which the others find the mint running.
    auto slow = std::make_shared<LeafMinter>(ca, [] {
      std::this_thread::sleep_for(50ms);
      return Clock::now();
    });
    CertCache cache(slow, 16, [] { return Clock::now(); });
    std::latch go(8);
    std::vector<std::shared_ptr<const Leaf>> got(8);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < 8; ++i) {
      threads.emplace_back([&, i] {
        go.arrive_and_wait();
        got[i] = cache.get(name_of("shared.example.com"));
      });
    }
    for (auto& t : threads)
      t.join();
    CHECK(cache.minted_total() == 1);
    for (const auto& leaf : got)
      CHECK(leaf == got[0]);
    // Other names are not held up by one name's mint: no lock is held while minting.
    std::thread slow_one([&] { cache.get(name_of("slow.example.com")); });
    std::this_thread::sleep_for(5ms);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(cache.get(name_of("shared.example.com")) == got[0]);
    CHECK(std::chrono::steady_clock::now() - t0 < 30ms);
    slow_one.join();
    CHECK(cache.minted_total() == 2);
  }

  SUBCASE("a refused name makes no entry and evicts nothing") {
    TempDir d2;
    auto cca = CertificateAuthority::load(config_in(d2, {"*.ok.test"}), true);
    CertCache cache(std::make_shared<LeafMinter>(cca), 4);
    CHECK_THROWS_AS(cache.get(name_of("no.example.com")), MintError);
    CHECK(cache.size() == 0);
    auto a = cache.get(name_of("a.ok.test"));
    auto b = cache.get(name_of("b.ok.test"));
    CHECK(cache.size() == 2);
    // Refused names make no entry, so they cannot evict the leaves there are.
    for (int i = 0; i < 20; ++i) {
      CHECK_THROWS_AS(cache.get(name_of("x" + std::to_string(i) + ".example.com")), MintError);
      CHECK_THROWS_AS(cache.get(CertName{"bad name " + std::to_string(i), false}), MintError);
    }
    CHECK(cache.size() == 2);
    CHECK(cache.get(name_of("a.ok.test")) == a);
    CHECK(cache.get(name_of("b.ok.test")) == b);
    CHECK(cache.minted_total() == 2);
  }

  SUBCASE("a mint that fails: every waiter gets the error, nothing is cached") {
    // The minter's clock is past the CA's end, slowly: signing fails after the
    // checks, while the other callers wait on the same mint.
    auto late = std::make_shared<LeafMinter>(ca, [] {
      std::this_thread::sleep_for(30ms);
      return Clock::now() + 24h * 365 * 20;
    });
    CertCache cache(late, 4, [] { return Clock::now(); });
    std::atomic<int> errors{0};
    std::latch go(4);
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
      threads.emplace_back([&] {
        go.arrive_and_wait();
        try {
          cache.get(name_of("late.example.com"));
        } catch (const MintError&) {
          ++errors;
        }
      });
    }
    for (auto& t : threads)
      t.join();
    CHECK(errors == 4);
    CHECK(cache.size() == 0);
    CHECK(cache.minted_total() == 0);
  }
}

TEST_CASE("cert cache: re-minted in the last third of a leaf's life") {
  TempDir dir;
  auto ca = CertificateAuthority::load(config_in(dir), true);
  std::atomic<Clock::rep> offset{0};
  auto clock = [&offset] { return Clock::now() + Clock::duration(offset.load()); };
  auto minter = std::make_shared<LeafMinter>(ca, clock);
  CertCache cache(minter, 8);
  const CertName n = name_of("renew.example.com");
  auto first = cache.get(n);
  offset = std::chrono::duration_cast<Clock::duration>(24h * 19).count();  // 11 of 30 days left
  CHECK(cache.get(n) == first);
  CHECK(cache.minted_total() == 1);
  offset = std::chrono::duration_cast<Clock::duration>(24h * 21).count();  // 9 days left
  auto second = cache.get(n);
  CHECK(second != first);
  CHECK(cache.minted_total() == 2);
  CHECK(second->not_after() > first->not_after());
  CHECK(cache.get(n) == second);                                           // fresh again
  offset = std::chrono::duration_cast<Clock::duration>(24h * 60).count();  // past its end
  auto third = cache.get(n);
  CHECK(third != second);
  CHECK(cache.minted_total() == 3);

  // A leaf that ends with the CA is kept to the end: a new one would end no later.
  TempDir d2;
  HandCa short_ca = make_hand_ca(d2, "short", ec_key(), kCaExts, std::chrono::hours(24 * 6));
  auto sca = CertificateAuthority::load(config_with_ca(d2, short_ca), false);
  std::atomic<Clock::rep> soff{0};
  auto sclock = [&soff] { return Clock::now() + Clock::duration(soff.load()); };
  CertCache scache(std::make_shared<LeafMinter>(sca, sclock), 4);
  auto s1 = scache.get(n);
  soff = std::chrono::duration_cast<Clock::duration>(24h * 5).count();
  CHECK(scache.get(n) == s1);
  CHECK(scache.minted_total() == 1);
}

TEST_CASE("`upkeep ca`: init, path, env, install") {
  TempDir dir;
  Config cfg = config_in(dir);
  cfg.intercept.state_dir = dir.path + "/it's state";
  cfg.listen = HostPort{"::", 3129};
  std::ostringstream out, err;

  SUBCASE("before init: path and env fail and tell to run init; nothing is created") {
    CHECK(run_ca_command("path", cfg, out, err) == 1);
    CHECK(contains(err.str(), "upkeep ca init"));
    CHECK(out.str().empty());
    std::ostringstream err2;
    CHECK(run_ca_command("env", cfg, out, err2) == 1);
    CHECK(contains(err2.str(), "upkeep ca init"));
    CHECK(err2.str().find('\n') == err2.str().size() - 1);  // one line
    CHECK(!std::filesystem::exists(cfg.intercept.state_dir));
  }

  SUBCASE("init, then path and env") {
    REQUIRE(run_ca_command("init", cfg, out, err) == 0);
    const std::string cert = cfg.intercept.state_dir + "/ca.pem";
    const std::string bundle = cfg.intercept.state_dir + "/ca-bundle.pem";
    CHECK(out.str() == cert + "\n");
    CHECK(std::filesystem::exists(bundle));
    CHECK(contains(err.str(), "created a new interception CA"));

    std::ostringstream out2, err2;
    CHECK(run_ca_command("init", cfg, out2, err2) == 0);  // again: the same CA, quietly
    CHECK(out2.str() == cert + "\n");
    CHECK(err2.str().empty());

    std::ostringstream path_out;
    CHECK(run_ca_command("path", cfg, path_out, err2) == 0);
    CHECK(path_out.str() == cert + "\n");

    std::filesystem::remove(bundle);  // env writes it again when missing
    std::ostringstream env_out;
    CHECK(run_ca_command("env", cfg, env_out, err2) == 0);
    const std::string q = "'" + dir.path + "/it'\\''s state";
    const std::string expected =
        "export http_proxy='http://[::1]:3129'\n"
        "export https_proxy='http://[::1]:3129'\n"
        "export HTTP_PROXY='http://[::1]:3129'\n"
        "export HTTPS_PROXY='http://[::1]:3129'\n"
        "export SSL_CERT_FILE=" +
        q +
        "/ca-bundle.pem'\n"
        "export REQUESTS_CA_BUNDLE=" +
        q +
        "/ca-bundle.pem'\n"
        "export CURL_CA_BUNDLE=" +
        q +
        "/ca-bundle.pem'\n"
        "export NODE_EXTRA_CA_CERTS=" +
        q +
        "/ca.pem'\n"
        "export WGETRC=" +
        q + "/wgetrc'\n";
    CHECK(env_out.str() == expected);
    CHECK(std::filesystem::exists(bundle));
    CHECK(read_text(cfg.intercept.state_dir + "/wgetrc").find("ca_certificate = " + bundle) !=
          std::string::npos);
    CHECK(err2.str().empty());

    // What the shell makes of it.
    const std::string script = dir.path + "/env.sh";
    write_file(script, env_out.str() + "printf '%s\\n' \"$NODE_EXTRA_CA_CERTS\"\n", 0600);
    FILE* p = ::popen(("sh " + script).c_str(), "r");
    REQUIRE(p);
    char buf[512] = {};
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, p);
    ::pclose(p);
    CHECK(std::string(buf, n) == cert + "\n");
  }

  SUBCASE("env: an IPv4 listen address") {
    cfg.listen = HostPort{"127.0.0.1", 3128};
    REQUIRE(run_ca_command("init", cfg, out, err) == 0);
    std::ostringstream env_out;
    CHECK(run_ca_command("env", cfg, env_out, err) == 0);
    CHECK(env_out.str().starts_with("export http_proxy='http://127.0.0.1:3128'\n"));
  }

  SUBCASE("install, with the trust store's places swapped for the test's") {
    auto ca = CertificateAuthority::load(cfg, true);
    const std::string anchors = dir.path + "/anchors";
    const std::string tool = dir.path + "/update-tool";
    write_file(tool, "#!/bin/sh\necho 'Updating certificates... 1 added'\n", 0755);
    std::ostringstream iout, ierr;
    CHECK(install_ca_certificate(*ca, anchors, tool, iout, ierr) == 0);
    CHECK(mode_of(anchors + "/upkeep-ca.crt") == 0644);
    CHECK(read_text(anchors + "/upkeep-ca.crt") == pem_of(ca->cert()));
    CHECK(contains(iout.str(), "1 added"));
    CHECK(ierr.str().empty());
    write_file(tool, "#!/bin/sh\necho broken >&2\nexit 3\n", 0755);
    std::ostringstream fout, ferr;
    CHECK(install_ca_certificate(*ca, anchors, tool, fout, ferr) == 1);
    CHECK(contains(ferr.str(), "exit 3"));
    CHECK(contains(fout.str(), "broken"));
  }

  SUBCASE("unknown verb") {
    CHECK(run_ca_command("frobnicate", cfg, out, err) == 1);
    CHECK(contains(err.str(), "init, path, env or install"));
  }

  SUBCASE("shell_quote") {
    CHECK(shell_quote("") == "''");
    CHECK(shell_quote("a b") == "'a b'");
    CHECK(shell_quote("it's") == "'it'\\''s'");
    CHECK(shell_quote("$(rm -rf /)`x`") == "'$(rm -rf /)`x`'");
  }
}

TEST_CASE("mint cost and cache memory (reported, not asserted: the benchmark asserts)") {
  TempDir dir;
  auto ca = CertificateAuthority::load(config_in(dir), true);
  auto minter = std::make_shared<LeafMinter>(ca);
  std::vector<double> micros;
  micros.reserve(1000);
  for (int i = 0; i < 1000; ++i) {
    const CertName n = name_of("bench" + std::to_string(i) + ".example.com");
    const auto t0 = std::chrono::steady_clock::now();
    auto leaf = minter->mint(n);
    const auto t1 = std::chrono::steady_clock::now();
    micros.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    REQUIRE(leaf);
  }
  std::sort(micros.begin(), micros.end());
  MESSAGE("leaf mint (ECDSA P-256): median " << micros[500] << " us, p99 " << micros[990]
                                             << " us over 1000 mints");

  const long before = rss_kib();
  {
    CertCache cache(minter, 1000);
    for (int i = 0; i < 1000; ++i)
      cache.get(name_of("rss" + std::to_string(i) + ".example.com"));
    const long after = rss_kib();
    CHECK(cache.size() == 1000);
    MESSAGE("RSS growth for 1000 cached leaves: " << (after - before) << " KiB ("
                                                  << (after - before) * 1024 / 1000
                                                  << " bytes per leaf)");
  }
}
