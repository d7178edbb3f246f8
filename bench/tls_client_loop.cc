// tls_client_loop: the client side of bench/run-tls-bench. Connects over TCP to a TLS 1.3 server
// (openssl s_server) and performs full handshakes, no session resumption (no session cache, no
// tickets), on `--connections` concurrent connections, then prints handshakes/s. A handshake
// counts when SSL_connect succeeds (the client has checked the server's CertificateVerify
// signature over the transcript); the certificate chain is not verified (self-signed bench certs).
// Each connection then sends close_notify, half-closes and waits for the server to close, so the
// server has finished with it before the next one is counted. Any failed handshake ends the run
// with exit status 1.
//
// usage: tls_client_loop --port P [--host 127.0.0.1] [--handshakes N] [--seconds S]
//                        [--connections C] [--warmup W] [--wait S]
//   N: stop after N timed handshakes; S: stop after S seconds (whichever comes first; at least
//   one must be given). W untimed handshakes run first (default 1); the first one retries the
//   TCP connection for up to --wait seconds (default 30) while the server starts.
// Output: "tls_client_loop: N handshakes in T s: R hs/s (C connections), client CPU U us/handshake"
// (user + system CPU of this process during the timed handshakes).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "tls_client_loop: %s\n", what.c_str());
  ERR_print_errors_fp(stderr);
  std::exit(1);
}

struct Opts {
  std::string host = "127.0.0.1";
  int port = 0;
  uint64_t handshakes = 0;  // 0: unbounded
  double seconds = 0;       // 0: unbounded
  int connections = 1;
  int warmup = 1;
  double wait = 30;
};

// Connect opens a TCP connection; -1 with errno set on failure.
int Connect(const Opts& o) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(o.port));
  if (inet_pton(AF_INET, o.host.c_str(), &addr.sin_addr) != 1) {
    Die("bad IPv4 address " + o.host);
  }
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// Handshake runs one full TLS handshake on a new connection and closes it cleanly; false (with
// the reason on stderr) if the handshake failed.
bool Handshake(SSL_CTX* ctx, int fd) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr || SSL_set_fd(ssl, fd) != 1) {
    SSL_free(ssl);
    close(fd);
    return false;
  }
  const int r = SSL_connect(ssl);
  const bool ok = r == 1;
  if (!ok) {
    std::fprintf(stderr, "tls_client_loop: handshake failed (SSL_get_error %d)\n",
                 SSL_get_error(ssl, r));
    ERR_print_errors_fp(stderr);
  } else {
    SSL_shutdown(ssl);  // close_notify
    shutdown(fd, SHUT_WR);
    char buf[512];
    while (recv(fd, buf, sizeof(buf), 0) > 0) {
      // Drain until the server closes its side.
    }
  }
  SSL_free(ssl);
  close(fd);
  return ok;
}

Opts Parse(int argc, char** argv) {
  Opts o;
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      Die("missing value for " + a);
    }
    const char* v = argv[i + 1];
    if (a == "--host") {
      o.host = v;
    } else if (a == "--port") {
      o.port = std::atoi(v);
    } else if (a == "--handshakes") {
      o.handshakes = std::strtoull(v, nullptr, 10);
    } else if (a == "--seconds") {
      o.seconds = std::atof(v);
    } else if (a == "--connections") {
      o.connections = std::atoi(v);
    } else if (a == "--warmup") {
      o.warmup = std::atoi(v);
    } else if (a == "--wait") {
      o.wait = std::atof(v);
    } else {
      Die("usage: tls_client_loop --port P [--host H] [--handshakes N] [--seconds S] "
          "[--connections C] [--warmup W] [--wait S]");
    }
  }
  if (o.port <= 0 || o.port > 65535) {
    Die("--port is required");
  }
  if (o.handshakes == 0 && o.seconds <= 0) {
    Die("give --handshakes N and/or --seconds S");
  }
  if (o.connections < 1 || o.warmup < 0) {
    Die("--connections must be >= 1 and --warmup >= 0");
  }
  return o;
}

// CpuSeconds is this process' user + system CPU time so far.
double CpuSeconds() {
  rusage ru = {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const Opts o = Parse(argc, argv);
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr || SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    Die("client context");
  }
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);

  for (int i = 0; i < o.warmup; ++i) {
    int fd = -1;
    const auto give_up = Clock::now() + std::chrono::duration<double>(o.wait);
    while ((fd = Connect(o)) < 0) {
      if (i > 0 || errno != ECONNREFUSED || Clock::now() > give_up) {
        Die("connect to " + o.host + ":" + std::to_string(o.port) + ": " + std::strerror(errno));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!Handshake(ctx, fd)) {
      Die("warm-up handshake failed");
    }
  }

  std::atomic<uint64_t> claimed{0};
  std::atomic<uint64_t> done{0};
  std::atomic<bool> failed{false};
  const double cpu0 = CpuSeconds();
  const auto start = Clock::now();
  const auto deadline = o.seconds > 0 ? start + std::chrono::duration<double>(o.seconds)
                                      : Clock::time_point::max();
  std::vector<std::thread> threads;
  for (int t = 0; t < o.connections; ++t) {
    threads.emplace_back([&] {
      while (!failed.load() && Clock::now() < deadline) {
        if (o.handshakes > 0 && claimed.fetch_add(1) >= o.handshakes) {
          return;
        }
        const int fd = Connect(o);
        if (fd < 0) {
          std::fprintf(stderr, "tls_client_loop: connect: %s\n", std::strerror(errno));
          failed = true;
          return;
        }
        if (!Handshake(ctx, fd)) {
          failed = true;
          return;
        }
        ++done;
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu = CpuSeconds() - cpu0;
  SSL_CTX_free(ctx);
  if (failed.load()) {
    Die("a handshake failed after " + std::to_string(done.load()) + " successful ones");
  }
  const double n = static_cast<double>(done.load());
  std::printf("tls_client_loop: %llu handshakes in %.3f s: %.1f hs/s (%d connections), client CPU "
              "%.0f us/handshake\n",
              static_cast<unsigned long long>(done.load()), elapsed, n / elapsed, o.connections,
              n > 0 ? cpu * 1e6 / n : 0.0);
  return 0;
}
