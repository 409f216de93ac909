#include "h2_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "thread_cache.hpp"

namespace upkeep {

H2Memory::H2Memory() noexcept
    : mem_{this, &H2Memory::malloc_cb, &H2Memory::free_cb, &H2Memory::calloc_cb,
           &H2Memory::realloc_cb} {}

H2Memory::~H2Memory() {
  for (Mapping& m : maps_)
    if (m.base != nullptr) unmap(m);
}

nghttp2_mem* H2Memory::mem() noexcept {
  if (!thread_cache::kInUse) return nullptr;
  return &mem_;
}

void* H2Memory::allocate(std::size_t n) noexcept {
  if (setup_ && n >= kMapAtLeast) {
    auto free_slot = std::find_if(maps_.begin(), maps_.end(),
                                  [](const Mapping& m) { return m.base == nullptr; });
    if (free_slot != maps_.end()) {
      void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p != MAP_FAILED) {
        *free_slot = {p, n};
        return p;
      }
    }
  }
  return thread_cache::allocate(n);
}

H2Memory::Mapping* H2Memory::mapping_of(void* p) noexcept {
  for (Mapping& m : maps_)
    if (m.base == p && p != nullptr) return &m;
  return nullptr;
}

void H2Memory::unmap(Mapping& m) noexcept {
  ::munmap(m.base, m.length);
  m = {};
}

void* H2Memory::malloc_cb(std::size_t n, void* self) {
  return static_cast<H2Memory*>(self)->allocate(n);
}

void H2Memory::free_cb(void* p, void* self) {
  auto& h = *static_cast<H2Memory*>(self);
  if (Mapping* m = h.mapping_of(p)) {
    h.unmap(*m);
    return;
  }
  thread_cache::deallocate(p);
}

void* H2Memory::calloc_cb(std::size_t count, std::size_t size, void* self) {
  if (size != 0 && count > static_cast<std::size_t>(-1) / size) return nullptr;
  auto& h = *static_cast<H2Memory*>(self);
  void* p = h.allocate(count * size);
  // A fresh mapping is zero already; writing zeros would make it resident.
  if (p != nullptr && h.mapping_of(p) == nullptr) std::memset(p, 0, count * size);
  return p;
}

void* H2Memory::realloc_cb(void* p, std::size_t n, void* self) {
  auto& h = *static_cast<H2Memory*>(self);
  if (p == nullptr) return h.allocate(n);  // how nghttp2_buf_init2 takes the frame buffer
  Mapping* m = h.mapping_of(p);
  if (m == nullptr) return thread_cache::reallocate(p, n);
  if (n <= m->length) return p;
  void* q = thread_cache::allocate(n);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, m->length);
  h.unmap(*m);
  return q;
}

std::size_t H2Memory::mapped_blocks() const noexcept {
  return static_cast<std::size_t>(
      std::count_if(maps_.begin(), maps_.end(), [](const Mapping& m) { return m.base; }));
}

std::size_t H2Memory::resident_pages() const noexcept {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::size_t resident = 0;
  for (const Mapping& m : maps_) {
    if (m.base == nullptr) continue;
    std::vector<unsigned char> v((m.length + page - 1) / page);
    if (::mincore(m.base, m.length, v.data()) != 0) continue;
    resident += static_cast<std::size_t>(
        std::count_if(v.begin(), v.end(), [](unsigned char c) { return (c & 1) != 0; }));
  }
  return resident;
}

}  // namespace upkeep
