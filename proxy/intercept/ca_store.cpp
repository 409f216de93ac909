#include "intercept/ca_store.hpp"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string_view>
#include <system_error>
#include <utility>

namespace upkeep::intercept {
namespace {

constexpr const char* kCertFile = "ca.pem";
constexpr const char* kKeyFile = "ca-key.pem";
constexpr const char* kBundleFile = "ca-bundle.pem";
constexpr auto kCaLifetime = std::chrono::hours(24 * 3650);
// A client whose clock runs a little slow must not see a CA from the future.
constexpr auto kCaBackdate = std::chrono::hours(24);
constexpr std::size_t kMaxPemBytes = 4 * 1024 * 1024;  // a system bundle is ~200 KiB

[[noreturn]] void fail(const std::string& key, const std::string& msg) {
  throw ConfigError(key + ": " + msg);
}

std::string errno_text(int e) {
  return std::error_code(e, std::generic_category()).message();
}

class Fd {
 public:
  explicit Fd(int fd = -1) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_;
};

// Key material: wiped before the memory goes back to the allocator.
struct SecretBytes {
  std::vector<char> bytes;
  ~SecretBytes() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
};

// Reads a whole regular file whose size fstat already gave, into storage sized once
// (a growing buffer would leave copies of a key in freed memory).
bool read_exact(int fd, std::vector<char>& out, std::size_t size) {
  out.resize(size);
  std::size_t got = 0;
  while (got < size) {
    const ssize_t n = ::read(fd, out.data() + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  out.resize(got);
  return true;
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> b(bytes);
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
    throw std::runtime_error("RAND_bytes: " + take_openssl_error());
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : b) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

struct OpenedFile {
  Fd fd;
  struct stat st {};
};

OpenedFile open_regular(int dirfd, const std::string& name, const std::string& shown,
                        const std::string& key, int extra_flags) {
  OpenedFile f{Fd(::openat(dirfd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | extra_flags))};
  if (!f.fd) {
    const int e = errno;
    if (e == ELOOP)
      fail(key, shown + " is a symbolic link; upkeep's own CA files must be regular files");
    fail(key, shown + ": cannot open: " + errno_text(e));
  }
  if (::fstat(f.fd.get(), &f.st) != 0) fail(key, shown + ": " + errno_text(errno));
  if (!S_ISREG(f.st.st_mode)) fail(key, shown + " is not a regular file");
  if (static_cast<std::size_t>(f.st.st_size) > kMaxPemBytes)
    fail(key, shown + " is too large for PEM");
  return f;
}

X509StackPtr read_certs(int dirfd, const std::string& name, const std::string& shown,
                        const std::string& key, int extra_flags) {
  OpenedFile f = open_regular(dirfd, name, shown, key, extra_flags);
  std::vector<char> pem;
  if (!read_exact(f.fd.get(), pem, static_cast<std::size_t>(f.st.st_size))) {
    fail(key, shown + ": " + errno_text(errno));
  }
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509StackPtr certs(sk_X509_new_null());
  if (!bio || !certs) throw std::bad_alloc();
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    if (!sk_X509_push(certs.get(), x)) {
      X509_free(x);
      throw std::bad_alloc();
    }
  }
  // The loop ends on "no start line" at the end of the file: expected, not a fault.
  const std::string why = take_openssl_error();
  if (sk_X509_num(certs.get()) == 0) fail(key, shown + ": no PEM certificate in it (" + why + ")");
  return certs;
}

int refuse_passphrase(char*, int, int, void*) {
  return -1;
}

// The permission checks are made on the open descriptor, not on the path, so the
// file checked is the file read.
PkeyPtr read_key(int dirfd, const std::string& name, const std::string& shown, bool own) {
  const std::string key = "intercept.ca_key";
  OpenedFile f = open_regular(dirfd, name, shown, key, own ? O_NOFOLLOW : 0);
  if (f.st.st_mode & (S_IRGRP | S_IROTH)) {
    fail(key, shown + " is readable by group or others (chmod 600)");
  }
  if (f.st.st_mode & (S_IWGRP | S_IWOTH)) {
    fail(key, shown + " is writable by group or others (chmod 600)");
  }
  const uid_t me = ::geteuid();
  if (own && f.st.st_uid != me && f.st.st_uid != 0) {
    fail(key, shown + " is owned by uid " + std::to_string(f.st.st_uid) +
                  ", not by the user upkeep runs as (uid " + std::to_string(me) + ")");
  }
  SecretBytes pem;
  if (!read_exact(f.fd.get(), pem.bytes, static_cast<std::size_t>(f.st.st_size))) {
    fail(key, shown + ": " + errno_text(errno));
  }
  BioPtr bio(BIO_new_mem_buf(pem.bytes.data(), static_cast<int>(pem.bytes.size())));
  if (!bio) throw std::bad_alloc();
  // A passphrase prompt on the terminal of a service would hang it; refuse instead.
  PkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, refuse_passphrase, nullptr));
  if (!pkey) {
    const std::string why = take_openssl_error();
    const bool encrypted = std::string_view(pem.bytes.data(), pem.bytes.size()).find("ENCRYPTED") !=
                           std::string_view::npos;
    fail(key,
         shown + ": cannot read a PEM private key" +
             (encrypted ? std::string(" (an encrypted key is not supported)") : " (" + why + ")"));
  }
  const int type = EVP_PKEY_get_base_id(pkey.get());
  if (type != EVP_PKEY_RSA && type != EVP_PKEY_EC) {
    fail(key, shown + ": only RSA and EC keys are supported");
  }
  if (type == EVP_PKEY_RSA && EVP_PKEY_get_bits(pkey.get()) < 2048) {
    fail(key, shown + ": an RSA key needs at least 2048 bits");
  }
  return pkey;
}

// Publishes `data` as dir/name only if no such name exists (link(2) never replaces),
// and only complete: the bytes are written and synced under no name (O_TMPFILE) or
// a random temporary one, so a crash leaves either nothing or the whole file.
void publish_new(int dirfd, const std::string& dir, const std::string& name, std::string_view data,
                 mode_t mode, const std::string& key) {
  const std::string shown = dir + "/" + name;
  auto write_synced = [&](int fd) {
    if (::fchmod(fd, mode) != 0 || !write_all(fd, data) || ::fsync(fd) != 0) {
      fail(key, shown + ": cannot write: " + errno_text(errno));
    }
  };
  auto link_failed = [&](int e) {
    if (e == EEXIST) fail(key, shown + " appeared while upkeep was creating it; not overwritten");
    fail(key, shown + ": cannot create: " + errno_text(e));
  };
  Fd tmp(::openat(dirfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, mode));
  if (tmp) {
    write_synced(tmp.get());
    const std::string proc = "/proc/self/fd/" + std::to_string(tmp.get());
    if (::linkat(AT_FDCWD, proc.c_str(), dirfd, name.c_str(), AT_SYMLINK_FOLLOW) == 0) return;
    if (errno != ENOENT) link_failed(errno);  // ENOENT: no /proc; fall back below
  }
  const std::string tmp_name = "." + name + ".tmp-" + random_hex(8);
  Fd named(::openat(dirfd, tmp_name.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW,
                    mode));
  if (!named) fail(key, shown + ": cannot create: " + errno_text(errno));
  struct Unlink {
    int dirfd;
    const std::string& name;
    ~Unlink() { ::unlinkat(dirfd, name.c_str(), 0); }
  } unlink_tmp{dirfd, tmp_name};
  write_synced(named.get());
  if (::linkat(dirfd, tmp_name.c_str(), dirfd, name.c_str(), 0) != 0) link_failed(errno);
}

// Replaces dir/name atomically: readers see the old file or the new one, whole.
void replace_file(int dirfd, const std::string& dir, const std::string& name, std::string_view data,
                  mode_t mode, const std::string& key) {
  const std::string shown = dir + "/" + name;
  const std::string tmp_name = "." + name + ".tmp-" + random_hex(8);
  Fd fd(::openat(dirfd, tmp_name.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW,
                 mode));
  if (!fd) fail(key, shown + ": cannot create: " + errno_text(errno));
  if (::fchmod(fd.get(), mode) != 0 || !write_all(fd.get(), data) || ::fsync(fd.get()) != 0 ||
      ::renameat(dirfd, tmp_name.c_str(), dirfd, name.c_str()) != 0) {
    const int e = errno;
    ::unlinkat(dirfd, tmp_name.c_str(), 0);
    fail(key, shown + ": cannot write: " + errno_text(e));
  }
}

struct StateDir {
  Fd fd;
  std::vector<std::string> warnings;
};

// The state directory, checked on its open descriptor: it must belong to upkeep's
// user (or root) and must not be writable by anyone else, who could otherwise swap
// in a CA of their own choosing. Missing: created 0700 (parents too, as XDG asks) when
// `create`, else nullopt.
std::optional<StateDir> open_state_dir(const std::string& path, bool create) {
  const std::string key = "intercept.state_dir";
  if (path.empty()) fail(key, "is empty");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) fail(key, path + ": " + errno_text(errno));
    if (!create) return std::nullopt;
    for (std::size_t i = path.find('/', 1); i != std::string::npos; i = path.find('/', i + 1)) {
      const std::string parent = path.substr(0, i);
      if (::mkdir(parent.c_str(), 0700) != 0 && errno != EEXIST) {
        fail(key, "cannot create " + parent + ": " + errno_text(errno));
      }
    }
    if (::mkdir(path.c_str(), 0700) == 0) {
      ::chmod(path.c_str(), 0700);  // whatever the umask
    } else if (errno != EEXIST) {
      fail(key, "cannot create " + path + ": " + errno_text(errno));
    }
  }
  StateDir d{Fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)), {}};
  if (!d.fd) fail(key, path + ": cannot open: " + errno_text(errno));
  if (::fstat(d.fd.get(), &st) != 0) fail(key, path + ": " + errno_text(errno));
  const uid_t me = ::geteuid();
  if (st.st_uid != me && st.st_uid != 0) {
    fail(key, path + " is owned by uid " + std::to_string(st.st_uid) +
                  ", not by the user upkeep runs as (uid " + std::to_string(me) + ")");
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    fail(key, path + " is writable by group or others (chmod 700)");
  }
  // Readable is only warned about: the key inside is 0600 on its own (checked at
  // load), the rest is public, and systemd's StateDirectory= makes 0755 by default.
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    d.warnings.push_back(key + ": " + path + " is accessible by group or others (mode " + mode +
                         "); the CA key in it is 0600, but chmod 700 keeps the directory private");
  }
  return d;
}

bool exists_at(int dirfd, const char* name, const std::string& dir) {
  struct stat st {};
  if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) return true;
  if (errno == ENOENT) return false;
  fail("intercept.state_dir", dir + "/" + name + ": " + errno_text(errno));
}

// "upkeep interception CA (build-host, 2026-11-23)": a subject of its own per install,
// so two installs' CAs are never confused in a trust store listing.
std::string own_ca_common_name() {
  std::array<char, 256> host{};
  if (::gethostname(host.data(), host.size() - 1) != 0) host[0] = '\0';
  std::string h;
  for (const char* p = host.data(); *p; ++p) {
    const char c = *p;
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '-' || c == '.' || c == '_';
    h += plain ? c : '?';
  }
  if (h.empty()) h = "unknown host";
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char date[16];
  std::strftime(date, sizeof date, "%Y-%m-%d", &tm);
  const std::string head = "upkeep interception CA (";
  const std::string tail = std::string(", ") + date + ")";
  const std::size_t room = 64 - head.size() - tail.size();  // X.520 ub-common-name
  if (h.size() > room) h.resize(room);
  return head + h + tail;
}

struct NewCa {
  X509Ptr cert;
  PkeyPtr key;
};

NewCa make_own_ca(const std::vector<std::string>& hosts) {
  PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) throw std::runtime_error("P-256 key generation: " + take_openssl_error());
  X509Ptr x(X509_new());
  if (!x) throw std::bad_alloc();
  X509_set_version(x.get(), X509_VERSION_3);
  set_random_serial(x.get());
  X509_NAME* name = X509_get_subject_name(x.get());
  const std::string cn = own_ca_common_name();
  if (X509_NAME_add_entry_by_NID(name, NID_organizationName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>("upkeep"), -1, -1,
                                 0) != 1 ||
      X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.data()),
                                 static_cast<int>(cn.size()), -1, 0) != 1 ||
      X509_set_issuer_name(x.get(), name) != 1) {
    throw std::runtime_error("CA subject: " + take_openssl_error());
  }
  const auto now = std::chrono::system_clock::now();
  const auto to_t = [](std::chrono::system_clock::time_point t) {
    return std::chrono::system_clock::to_time_t(t);
  };
  if (!ASN1_TIME_set(X509_getm_notBefore(x.get()), to_t(now - kCaBackdate)) ||
      !ASN1_TIME_set(X509_getm_notAfter(x.get()), to_t(now + kCaLifetime)) ||
      X509_set_pubkey(x.get(), key.get()) != 1) {
    throw std::runtime_error("CA validity: " + take_openssl_error());
  }

  BasicConstraintsPtr bc(BASIC_CONSTRAINTS_new());
  if (!bc) throw std::bad_alloc();
  bc->ca = 0xFF;
  // pathlen 0: this CA signs leaves only, so a leaf key that leaks can never act
  // as a CA under it.
  bc->pathlen = ASN1_INTEGER_new();
  if (!bc->pathlen || ASN1_INTEGER_set(bc->pathlen, 0) != 1) throw std::bad_alloc();
  add_ext(x.get(), NID_basic_constraints, bc.get(), true);

  BitStringPtr ku(ASN1_BIT_STRING_new());
  if (!ku || ASN1_BIT_STRING_set_bit(ku.get(), 5, 1) != 1 ||  // keyCertSign
      ASN1_BIT_STRING_set_bit(ku.get(), 6, 1) != 1) {         // cRLSign
    throw std::bad_alloc();
  }
  add_ext(x.get(), NID_key_usage, ku.get(), true);

  const auto skid = key_identifier(key.get());
  add_ext(x.get(), NID_subject_key_identifier, octets(skid).get(), false);
  AkidPtr akid(AUTHORITY_KEYID_new());
  if (!akid) throw std::bad_alloc();
  akid->keyid = octets(skid).release();
  add_ext(x.get(), NID_authority_key_identifier, akid.get(), false);

  const NameConstraints nc = NameConstraints::for_hosts(hosts);
  if (nc.present) add_name_constraints(x.get(), nc);

  if (X509_sign(x.get(), key.get(), EVP_sha256()) <= 0) {
    throw std::runtime_error("signing the CA: " + take_openssl_error());
  }
  return {std::move(x), std::move(key)};
}

std::string secret_pem_of(EVP_PKEY* key) {
  // Secure-heap BIO when one is configured, wiped on free either way.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw std::runtime_error("PEM_write_bio_PrivateKey: " + take_openssl_error());
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

void create_own_ca(int dirfd, const std::string& dir, const std::vector<std::string>& hosts) {
  NewCa ca = make_own_ca(hosts);
  std::string key_pem = secret_pem_of(ca.key.get());
  struct Wipe {
    std::string& s;
    ~Wipe() { OPENSSL_cleanse(s.data(), s.size()); }
  } wipe{key_pem};
  // Key first: a crash between the two leaves a key without a certificate, which
  // load reports, rather than a certificate someone might trust with no key.
  publish_new(dirfd, dir, kKeyFile, key_pem, 0600, "intercept.ca_key");
  publish_new(dirfd, dir, kCertFile, pem_of(ca.cert.get()), 0644, "intercept.ca_cert");
  ::fsync(dirfd);
}

}  // namespace

std::string resolve_state_dir(const InterceptSettings& s) {
  if (!s.state_dir.empty()) return s.state_dir;
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  const std::string sd = env("STATE_DIRECTORY");  // systemd's StateDirectory=
  if (!sd.empty()) {
    const std::string first = sd.substr(0, sd.find(':'));
    if (!first.empty()) return first;
  }
  if (::geteuid() == 0) return "/var/lib/upkeep";
  const std::string xdg = env("XDG_STATE_HOME");
  if (!xdg.empty() && xdg.front() == '/') return xdg + "/upkeep";
  std::string home = env("HOME");
  if (home.empty()) {
    if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_dir) home = pw->pw_dir;
  }
  if (home.empty() || home.front() != '/') {
    throw ConfigError(
        "intercept.state_dir: is empty and neither $STATE_DIRECTORY, "
        "$XDG_STATE_HOME nor $HOME names a directory; set it");
  }
  return home + "/.local/state/upkeep";
}

std::optional<std::string> CertificateAuthority::find_cert(const InterceptSettings& s) {
  if (!s.ca_cert.empty()) {
    return ::access(s.ca_cert.c_str(), R_OK) == 0 ? std::optional(s.ca_cert) : std::nullopt;
  }
  const std::string dir = resolve_state_dir(s);
  const std::string cert = dir + "/" + kCertFile, key = dir + "/" + kKeyFile;
  struct stat st {};
  if (::stat(cert.c_str(), &st) != 0 || ::lstat(key.c_str(), &st) != 0) return std::nullopt;
  return cert;
}

std::shared_ptr<const CertificateAuthority> CertificateAuthority::load(const Config& cfg,
                                                                       bool create) {
  const InterceptSettings& ic = cfg.intercept;
  std::shared_ptr<CertificateAuthority> ca(new CertificateAuthority());
  ca->state_dir_ = resolve_state_dir(ic);
  const std::string cert_key = "intercept.ca_cert";
  X509StackPtr certs;
  std::string key_shown;
  if (!ic.ca_cert.empty()) {
    if (ic.ca_key.empty()) fail("intercept.ca_cert", "is set but intercept.ca_key is not");
    certs = read_certs(AT_FDCWD, ic.ca_cert, ic.ca_cert, cert_key, 0);
    ca->key_ = read_key(AT_FDCWD, ic.ca_key, ic.ca_key, false);
    ca->cert_path_ = ic.ca_cert;
    key_shown = ic.ca_key;
  } else {
    ca->own_ = true;
    const std::string& dir = ca->state_dir_;
    const std::string no_ca = "intercept.state_dir: no interception CA in " + dir +
                              " (run `upkeep ca init` to create one)";
    auto sd = open_state_dir(dir, create);
    if (!sd) throw ConfigError(no_ca);
    ca->warnings_ = std::move(sd->warnings);
    const int dirfd = sd->fd.get();
    // Held until the files are read back, so two processes starting at once cannot
    // both create a CA (the loser would read a half-published pair).
    while (::flock(dirfd, LOCK_EX) != 0) {
      if (errno != EINTR) fail("intercept.state_dir", dir + ": flock: " + errno_text(errno));
    }
    const bool have_cert = exists_at(dirfd, kCertFile, dir);
    const bool have_key = exists_at(dirfd, kKeyFile, dir);
    if (!have_cert && !have_key) {
      if (!create) throw ConfigError(no_ca);
      create_own_ca(dirfd, dir, ic.hosts);
      ca->created_ = true;
    } else if (have_cert != have_key) {
      const std::string present = have_cert ? kCertFile : kKeyFile;
      const std::string missing = have_cert ? kKeyFile : kCertFile;
      fail(have_cert ? "intercept.ca_key" : "intercept.ca_cert",
           dir + "/" + missing + " is missing but " + present +
               " is there (an interrupted `upkeep ca init`?); upkeep never replaces half a CA: "
               "remove " +
               dir + "/" + present + " to create a new one");
    }
    ca->cert_path_ = dir + "/" + kCertFile;
    key_shown = dir + "/" + kKeyFile;
    certs =
        read_certs(dirfd, kCertFile, ca->cert_path_ + " (upkeep's own CA)", cert_key, O_NOFOLLOW);
    ca->key_ = read_key(dirfd, kKeyFile, key_shown + " (upkeep's own CA)", true);
  }

  ca->cert_.reset(sk_X509_shift(certs.get()));
  ca->extra_chain_ = std::move(certs);
  X509* x = ca->cert_.get();
  const std::string& shown = ca->cert_path_;
  if (X509_check_private_key(x, ca->key_.get()) != 1) {
    ERR_clear_error();
    fail("intercept.ca_key", key_shown + " does not match the certificate " + shown);
  }
  const uint32_t flags = X509_get_extension_flags(x);
  if (flags & EXFLAG_INVALID) fail(cert_key, shown + " has malformed extensions");
  if (!(flags & EXFLAG_BCONS) || !(flags & EXFLAG_CA)) {
    fail(cert_key, shown + " is not a CA certificate (basicConstraints CA:TRUE is missing)");
  }
  if ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(x) & KU_KEY_CERT_SIGN)) {
    fail(cert_key, shown + " may not sign certificates (keyUsage lacks keyCertSign)");
  }
  if ((flags & EXFLAG_XKUSAGE) &&
      !(X509_get_extended_key_usage(x) & (XKU_SSL_SERVER | XKU_ANYEKU))) {
    fail(cert_key,
         shown + " may not issue server certificates (extendedKeyUsage lacks serverAuth)");
  }
  if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0)
    fail(cert_key, shown + " is not valid yet");
  if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) fail(cert_key, shown + " has expired");
  ca->not_after_ = to_time_point(X509_get0_notAfter(x));
  if (ca->not_after_ - std::chrono::system_clock::now() < std::chrono::hours(24 * 30)) {
    ca->warnings_.push_back(cert_key + ": " + shown +
                            " expires within 30 days; leaf certificates end with it");
  }
  if (const ASN1_OCTET_STRING* skid = X509_get0_subject_key_id(x)) {
    const auto* p = ASN1_STRING_get0_data(skid);
    ca->skid_.assign(p, p + ASN1_STRING_length(skid));
  } else {
    ca->skid_ = key_identifier(X509_get0_pubkey(x));
  }

  ca->nc_ = NameConstraints::of(x, cert_key);
  for (const auto& pattern : ic.hosts) {
    if (ca->nc_.permits_pattern(pattern)) continue;
    const std::string fix =
        ca->own_ ? "remove " + ca->state_dir_ + "/" + kCertFile + " and " + kKeyFile +
                       " to create a CA for these hosts (clients must then trust the new one)"
                 : "use a CA that permits it";
    fail("intercept.hosts", pattern + " is outside the CA's nameConstraints (" + shown +
                                " permits " + ca->nc_.describe() + "); " + fix);
  }
  return ca;
}

void CertificateAuthority::write_trust_bundle() const {
  const std::string key = "intercept.state_dir";
  auto sd = open_state_dir(state_dir_, true);
  std::string bundle;
  // The compiled-in path, not $SSL_CERT_FILE: `upkeep ca env` points that at this
  // very bundle, which would then grow by a copy of the CA on every write.
  const std::string roots = X509_get_default_cert_file();
  struct stat st {};
  if (::stat(roots.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    struct stat mine {};
    const bool is_mine = ::fstatat(sd->fd.get(), kBundleFile, &mine, 0) == 0 &&
                         mine.st_dev == st.st_dev && mine.st_ino == st.st_ino;
    Fd fd(is_mine ? -1 : ::open(roots.c_str(), O_RDONLY | O_CLOEXEC));
    std::vector<char> bytes;
    if (fd && static_cast<std::size_t>(st.st_size) <= kMaxPemBytes &&
        read_exact(fd.get(), bytes, static_cast<std::size_t>(st.st_size))) {
      bundle.assign(bytes.begin(), bytes.end());
      if (!bundle.empty() && bundle.back() != '\n') bundle += '\n';
    }
  }
  bundle += "# upkeep interception CA: " + cert_path_ + "\n";
  bundle += pem_of(cert_.get());
  for (int i = 0; i < sk_X509_num(extra_chain_.get()); ++i) {
    bundle += pem_of(sk_X509_value(extra_chain_.get(), i));
  }
  replace_file(sd->fd.get(), state_dir_, kBundleFile, bundle, 0644, key);
}

}  // namespace upkeep::intercept
