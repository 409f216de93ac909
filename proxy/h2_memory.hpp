// nghttp2's allocator for one HTTP/2 session.
//
// Small blocks (stream state, header buffers, frame items) go through thread_cache.
// The 16 KiB frame buffer that every session allocates when it is created comes
// from an anonymous mapping of its own instead. nghttp2 packs each outgoing frame at
// the start of that buffer, and the kernel backs only the pages that were written,
// so a connection that sends small frames (GET heads, WINDOW_UPDATEs, PINGs) keeps
// one page of it resident, not four. From malloc the block sits in heap pages that
// earlier blocks already touched: with 1,000 origins that was 16 MB of RSS.
#pragma once

#include <array>
#include <cstddef>

#include <nghttp2/nghttp2.h>

namespace upkeep {

class H2Memory {
 public:
  // Blocks of at least this many bytes asked for before end_setup() are mapped.
  static constexpr std::size_t kMapAtLeast = 16 * 1024;

  H2Memory() noexcept;
  // Unmaps what is still mapped. nghttp2_session_del frees every block first, so
  // the session must be deleted before its H2Memory.
  ~H2Memory();
  H2Memory(const H2Memory&) = delete;
  H2Memory& operator=(const H2Memory&) = delete;

  // For nghttp2_session_*_new3 (nghttp2 copies it). nullptr under the sanitizers:
  // nghttp2's own malloc then, which they see.
  nghttp2_mem* mem() noexcept;
  // Later large blocks (a header block over 16 KiB, say) are short-lived: malloc's.
  void end_setup() noexcept { setup_ = false; }

  // For tests: how many blocks are mapped now, and how many of their pages are
  // resident (mincore).
  std::size_t mapped_blocks() const noexcept;
  std::size_t resident_pages() const noexcept;

 private:
  struct Mapping {
    void* base = nullptr;
    std::size_t length = 0;
  };

  static void* malloc_cb(std::size_t n, void* self);
  static void free_cb(void* p, void* self);
  static void* calloc_cb(std::size_t count, std::size_t size, void* self);
  static void* realloc_cb(void* p, std::size_t n, void* self);

  void* allocate(std::size_t n) noexcept;
  // The mapping that holds p, or nullptr.
  Mapping* mapping_of(void* p) noexcept;
  void unmap(Mapping& m) noexcept;

  nghttp2_mem mem_;
  std::array<Mapping, 2> maps_{};
  bool setup_ = true;
};

}  // namespace upkeep
