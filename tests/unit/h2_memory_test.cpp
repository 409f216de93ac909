#include "h2_memory.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "thread_cache.hpp"

namespace {

// A real client session on an H2Memory, and a real server session (nghttp2's own
// malloc) that reads what the client sends.
struct Pair {
  upkeep::H2Memory memory;
  nghttp2_session* client = nullptr;
  nghttp2_session* server = nullptr;
  std::vector<std::string> header_values;  // what the server decoded

  Pair() {
    nghttp2_session_callbacks* cbs = nullptr;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_client_new3(&client, cbs, this, nullptr, memory.mem());
    memory.end_setup();
    nghttp2_session_callbacks_set_on_header_callback(
        cbs, [](nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                const uint8_t* value, size_t valuelen, uint8_t, void* user) {
          static_cast<Pair*>(user)->header_values.emplace_back(reinterpret_cast<const char*>(value),
                                                               valuelen);
          return 0;
        });
    nghttp2_session_server_new(&server, cbs, this);
    nghttp2_session_callbacks_del(cbs);
    REQUIRE(nghttp2_submit_settings(client, NGHTTP2_FLAG_NONE, nullptr, 0) == 0);
  }
  ~Pair() {
    nghttp2_session_del(client);
    nghttp2_session_del(server);
  }

  // GET with one extra header of `value`; the client's frames go to the server.
  void get(const std::string& value) {
    std::string name = "x-test";
    auto nv = [](const std::string& n, const std::string& v) {
      return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                        reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                        NGHTTP2_NV_FLAG_NONE};
    };
    const std::string m = ":method", g = "GET", s = ":scheme", h = "https", p = ":path", sl = "/",
                      a = ":authority", o = "origin.test";
    std::vector<nghttp2_nv> nva{nv(m, g), nv(s, h), nv(p, sl), nv(a, o), nv(name, value)};
    REQUIRE(nghttp2_submit_request(client, nullptr, nva.data(), nva.size(), nullptr, nullptr) > 0);
    for (;;) {
      const uint8_t* data = nullptr;
      const auto n = nghttp2_session_mem_send(client, &data);
      REQUIRE(n >= 0);
      if (n == 0) break;
      REQUIRE(nghttp2_session_mem_recv(server, data, static_cast<size_t>(n)) == n);
    }
  }
};

}  // namespace

TEST_CASE("the frame buffer is mapped, and small frames keep one page of it resident") {
  Pair pair;
  if (!upkeep::thread_cache::kInUse) {
    CHECK(pair.memory.mem() == nullptr);  // sanitizers: nghttp2's malloc, which they see
    return;
  }
  REQUIRE(pair.memory.mapped_blocks() == 1);
  for (int i = 0; i < 20; ++i)
    pair.get("small-" + std::to_string(i));
  REQUIRE(pair.header_values.size() == 20 * 5);
  CHECK(pair.header_values.back() == "small-19");
  CHECK(pair.memory.resident_pages() == 1);
}

TEST_CASE("a header block larger than the frame buffer still goes out whole") {
  Pair pair;
  const std::string big(40 * 1024, 'v');  // HEADERS + CONTINUATION, past the first chunk
  pair.get(big);
  pair.get("after");
  REQUIRE(pair.header_values.size() == 10);
  CHECK(pair.header_values[4] == big);
  CHECK(pair.header_values[9] == "after");
  if (upkeep::thread_cache::kInUse) CHECK(pair.memory.mapped_blocks() == 1);
}

TEST_CASE("deleting the session unmaps the frame buffer") {
  upkeep::H2Memory memory;
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session* client = nullptr;
  REQUIRE(nghttp2_session_client_new3(&client, cbs, nullptr, nullptr, memory.mem()) == 0);
  nghttp2_session_callbacks_del(cbs);
  memory.end_setup();
  if (upkeep::thread_cache::kInUse) CHECK(memory.mapped_blocks() == 1);
  nghttp2_session_del(client);
  CHECK(memory.mapped_blocks() == 0);
}
