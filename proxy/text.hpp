// ASCII helpers for protocol text (header names, tokens, host names): locale-free
// on purpose, since HTTP's case-insensitivity is ASCII-only.
#pragma once

#include <algorithm>
#include <string_view>

namespace upkeep {

constexpr char ascii_lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return ascii_lower(x) == ascii_lower(y);
         });
}

}  // namespace upkeep
