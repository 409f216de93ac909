#include "intercept/ca_cli.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <system_error>
#include <vector>

extern char** environ;

namespace upkeep::intercept {
namespace {

constexpr const char* kAnchorsDir = "/usr/local/share/ca-certificates";
constexpr const char* kAnchorName = "upkeep-ca.crt";

std::string errno_text(int e) {
  return std::error_code(e, std::generic_category()).message();
}

// update-ca-certificates lives in /usr/sbin, which a non-login root shell's PATH
// may lack.
std::string find_update_tool() {
  std::string dirs;
  if (const char* p = std::getenv("PATH")) dirs = p;
  dirs += ":/usr/local/sbin:/usr/sbin:/sbin";
  for (std::size_t start = 0; start <= dirs.size();) {
    const std::size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string dir = dirs.substr(start, end - start);
    if (!dir.empty() && dir.front() == '/') {
      const std::string candidate = dir + "/update-ca-certificates";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    start = end + 1;
  }
  return "";
}

// Runs `tool` with no arguments and no shell, its stdout and stderr captured.
int run_tool(const std::string& tool, std::string& output) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe: " + errno_text(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  std::vector<char> arg0(tool.begin(), tool.end());
  arg0.push_back('\0');
  char* argv[] = {arg0.data(), nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, tool.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw std::runtime_error("cannot run " + tool + ": " + errno_text(rc));
  }
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    output.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error("waitpid: " + errno_text(errno));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

void write_public_file(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  ::unlink(tmp.c_str());  // left by a crashed run with this pid; the directory is root's
  const int fd = ::open(tmp.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + tmp + ": " + errno_text(errno));
  bool ok = ::fchmod(fd, 0644) == 0;
  for (std::string_view rest = data; ok && !rest.empty();) {
    const ssize_t n = ::write(fd, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) rest.remove_prefix(static_cast<std::size_t>(n));
  }
  ok = ok && ::fsync(fd) == 0;
  const int e = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e2 = ok ? errno : e;
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write " + path + ": " + errno_text(e2));
  }
}

// A client cannot connect to an unspecified address; it means "this host" here.
std::string proxy_url(const HostPort& listen) {
  HostPort hp = listen;
  if (hp.host.empty() || hp.host == "0.0.0.0") hp.host = "127.0.0.1";
  if (hp.host == "::") hp.host = "::1";
  return "http://" + hp.to_string();
}

int failed(std::ostream& err, const std::string& msg) {
  err << "upkeep: " << msg << '\n';
  return 1;
}

}  // namespace

std::string shell_quote(std::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  out += '\'';
  return out;
}

std::string wgetrc_path(const CertificateAuthority& ca) {
  return ca.state_dir() + "/wgetrc";
}

void write_client_files(const CertificateAuthority& ca) {
  ca.write_trust_bundle();
  write_public_file(wgetrc_path(ca),
                    "# Written by upkeep (`upkeep ca env` exports WGETRC=this file).\n"
                    "ca_certificate = " +
                        ca.bundle_path() + "\n");
}

std::string ca_env_exports(const Config& cfg, const CertificateAuthority& ca) {
  std::string out;
  auto line = [&](const char* name, const std::string& value) {
    out += "export ";
    out += name;
    out += '=';
    out += shell_quote(value);
    out += '\n';
  };
  const std::string url = proxy_url(cfg.listen);
  for (const char* name : {"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"})
    line(name, url);
  const std::string bundle = ca.bundle_path();
  for (const char* name : {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"}) {
    line(name, bundle);
  }
  line("NODE_EXTRA_CA_CERTS", ca.cert_path());
  line("WGETRC", wgetrc_path(ca));
  return out;
}

int install_ca_certificate(const CertificateAuthority& ca, const std::string& anchors_dir,
                           const std::string& tool, std::ostream& out, std::ostream& err) {
  if (::mkdir(anchors_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return failed(err, "cannot create " + anchors_dir + ": " + errno_text(errno));
  }
  // The CA alone: the trust store takes each .crt as one anchor.
  const std::string path = anchors_dir + "/" + kAnchorName;
  write_public_file(path, pem_of(ca.cert()));
  std::string output;
  const int rc = run_tool(tool, output);
  out << output;
  if (!output.empty() && output.back() != '\n') out << '\n';
  if (rc != 0) return failed(err, tool + " failed (exit " + std::to_string(rc) + ")");
  out << "installed " << path << '\n';
  return 0;
}

int run_ca_command(std::string_view verb, const Config& cfg, std::ostream& out, std::ostream& err) {
  try {
    if (verb == "init") {
      auto ca = CertificateAuthority::load(cfg, true);
      write_client_files(*ca);
      for (const auto& w : ca->warnings())
        err << "upkeep: warning: " << w << '\n';
      if (ca->created()) {
        err << "upkeep: created a new interception CA in " << ca->state_dir()
            << "; trust it with `eval \"$(upkeep ca env)\"` or `sudo upkeep ca install`\n";
      }
      out << ca->cert_path() << '\n';
      return 0;
    }
    if (verb == "path") {
      if (auto path = CertificateAuthority::find_cert(cfg.intercept)) {
        out << *path << '\n';
        return 0;
      }
      const std::string where = cfg.intercept.ca_cert.empty()
                                    ? resolve_state_dir(cfg.intercept) + "/ca.pem"
                                    : cfg.intercept.ca_cert;
      return failed(err, "no interception CA at " + where + " (run `upkeep ca init`)");
    }
    if (verb == "env") {
      auto ca = CertificateAuthority::load(cfg, false);
      if (::access(ca->bundle_path().c_str(), R_OK) != 0 ||
          ::access(wgetrc_path(*ca).c_str(), R_OK) != 0) {
        write_client_files(*ca);
      }
      out << ca_env_exports(cfg, *ca);
      return 0;
    }
    if (verb == "install") {
      if (::geteuid() != 0) {
        return failed(err,
                      "ca install writes the system trust store and must run as root "
                      "(sudo upkeep ca install)");
      }
      const std::string tool = find_update_tool();
      if (tool.empty()) {
        return failed(
            err,
            "update-ca-certificates not found (Debian/Ubuntu: apt-get install "
            "ca-certificates); add " +
                CertificateAuthority::find_cert(cfg.intercept).value_or("the CA certificate") +
                " to the trust store by hand");
      }
      auto ca = CertificateAuthority::load(cfg, false);
      return install_ca_certificate(*ca, kAnchorsDir, tool, out, err);
    }
    return failed(
        err, "unknown command `ca " + std::string(verb) + "` (use init, path, env or install)");
  } catch (const ConfigError& e) {
    return failed(err, e.what());
  } catch (const std::exception& e) {
    return failed(err, "ca " + std::string(verb) + ": " + e.what());
  }
}

}  // namespace upkeep::intercept
