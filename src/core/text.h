// A minimal string builder for messages. The library builds its error and explain texts with
// this instead of std::ostringstream: iostreams depend on libstdc++'s locale state, which breaks
// when the library is loaded into a process whose standard library differs from the one it was
// linked against (seen as a crash inside ostream::operator<< when a torch extension built with a
// newer toolchain formatted a shape).
#pragma once

#include <cstdio>
#include <string>
#include <type_traits>

namespace flashsdpa::core {

class Text {
 public:
  Text& operator<<(const std::string& s) {
    text_ += s;
    return *this;
  }
  Text& operator<<(const char* s) {
    text_ += s;
    return *this;
  }
  Text& operator<<(char c) {
    text_ += c;
    return *this;
  }
  template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
  Text& operator<<(T value) {
    if constexpr (std::is_same_v<T, bool>) {
      text_ += value ? "true" : "false";
    } else if constexpr (std::is_floating_point_v<T>) {
      char buffer[32];
      std::snprintf(buffer, sizeof(buffer), "%.9g", static_cast<double>(value));
      text_ += buffer;
    } else {
      text_ += std::to_string(value);
    }
    return *this;
  }
  const std::string& str() const { return text_; }

 private:
  std::string text_;
};

}  // namespace flashsdpa::core
