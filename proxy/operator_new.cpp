// The process's operator new and delete go through thread_cache (why: see
// thread_cache.hpp). Linked into the upkeep executable only, and left out of the
// sanitizer builds (CMakeLists.txt).
#include <cstddef>
#include <new>

#include "thread_cache.hpp"

static_assert(upkeep::thread_cache::kInUse, "operator_new.cpp is for non-sanitizer builds");

namespace {

void* allocate_or_throw(std::size_t n) {
  for (;;) {
    if (void* p = upkeep::thread_cache::allocate(n)) return p;
    std::new_handler h = std::get_new_handler();
    if (h == nullptr) throw std::bad_alloc();
    h();
  }
}

void* allocate_or_null(std::size_t n) noexcept {
  try {
    return allocate_or_throw(n);
  } catch (...) {
    return nullptr;
  }
}

}  // namespace

void* operator new(std::size_t n) {
  return allocate_or_throw(n);
}
void* operator new[](std::size_t n) {
  return allocate_or_throw(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return allocate_or_null(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return allocate_or_null(n);
}

void operator delete(void* p) noexcept {
  upkeep::thread_cache::deallocate(p);
}
void operator delete[](void* p) noexcept {
  upkeep::thread_cache::deallocate(p);
}
void operator delete(void* p, std::size_t n) noexcept {
  upkeep::thread_cache::deallocate(p, n);
}
void operator delete[](void* p, std::size_t n) noexcept {
  upkeep::thread_cache::deallocate(p, n);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  upkeep::thread_cache::deallocate(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  upkeep::thread_cache::deallocate(p);
}
