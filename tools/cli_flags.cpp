#include "cli_flags.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <utility>

namespace flashsdpa::cli {
namespace {

bool parse_int64(const std::string& text, int64_t* value) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long parsed = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end != text.c_str() + text.size()) return false;
  *value = parsed;
  return true;
}

bool parse_double(const std::string& text, double* value) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double parsed = std::strtod(text.c_str(), &end);
  if (errno != 0 || end != text.c_str() + text.size() || !std::isfinite(parsed)) return false;
  *value = parsed;
  return true;
}

}  // namespace

FlagSet::FlagSet(std::string command, std::string usage, std::string description)
    : command_(std::move(command)), usage_(std::move(usage)), description_(std::move(description)) {}

FlagSet::Flag& FlagSet::add(std::string name, std::string metavar, std::string help,
                            std::string default_text, std::function<void(const std::string&)> set) {
  Flag flag;
  flag.name = std::move(name);
  flag.metavar = std::move(metavar);
  flag.help = std::move(help);
  flag.default_text = std::move(default_text);
  flag.set = std::move(set);
  flags_.push_back(std::move(flag));
  return flags_.back();
}

void FlagSet::bad_value(const std::string& name, const std::string& expected, const std::string& got) const {
  throw UsageError("flashsdpa " + command_ + ": --" + name + " expects " + expected + "; got '" + got + "'");
}

void FlagSet::add_switch(const std::string& name, bool* target, const std::string& help) {
  add(name, "", help, "", [target](const std::string&) { *target = true; });
}

void FlagSet::add_int(const std::string& name, int64_t* target, int64_t min_value, const std::string& help,
                      const std::string& default_text) {
  const std::string shown = default_text.empty() ? std::to_string(*target) : default_text;
  add(name, "N", help, shown, [this, name, target, min_value](const std::string& text) {
    int64_t value = 0;
    if (!parse_int64(text, &value) || value < min_value) {
      bad_value(name, "an integer >= " + std::to_string(min_value), text);
    }
    *target = value;
  });
}

void FlagSet::add_float(const std::string& name, double* target, const std::string& help,
                        const std::string& default_text) {
  std::ostringstream shown;
  shown << *target;
  add(name, "X", help, default_text.empty() ? shown.str() : default_text,
      [this, name, target](const std::string& text) {
        double value = 0;
        if (!parse_double(text, &value)) bad_value(name, "a finite number", text);
        *target = value;
      });
}

void FlagSet::add_choice(const std::string& name, std::string* target, std::vector<std::string> choices,
                         const std::string& help) {
  std::string metavar;
  for (const std::string& choice : choices) metavar += (metavar.empty() ? "" : "|") + choice;
  add(name, metavar, help, *target, [this, name, target, choices, metavar](const std::string& text) {
    for (const std::string& choice : choices) {
      if (choice == text) {
        *target = text;
        return;
      }
    }
    bad_value(name, "one of " + metavar, text);
  });
}

void FlagSet::add_int_pair(const std::string& name, int64_t* first, int64_t* second, const std::string& help) {
  const std::string shown = std::to_string(*first) + "," + std::to_string(*second);
  add(name, "L,R", help, shown, [this, name, first, second](const std::string& text) {
    const size_t comma = text.find(',');
    int64_t a = 0, b = 0;
    if (comma == std::string::npos || !parse_int64(text.substr(0, comma), &a) ||
        !parse_int64(text.substr(comma + 1), &b) || a < -1 || b < -1) {
      bad_value(name, "two integers >= -1 separated by a comma (e.g. 512,0)", text);
    }
    *first = a;
    *second = b;
  });
}

FlagSet::Flag* FlagSet::find(const std::string& name) {
  for (Flag& flag : flags_) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

bool FlagSet::given(const std::string& name) const {
  for (const Flag& flag : flags_) {
    if (flag.name == name) return flag.given;
  }
  return false;
}

bool FlagSet::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      throw UsageError("flashsdpa " + command_ + ": unexpected argument '" + arg + "' (see 'flashsdpa " +
                       command_ + " --help')");
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_inline_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline_value = true;
    }
    Flag* flag = find(name);
    if (flag == nullptr) {
      throw UsageError("flashsdpa " + command_ + ": unknown flag '--" + name + "' (see 'flashsdpa " + command_ +
                       " --help')");
    }
    if (flag->metavar.empty()) {
      if (has_inline_value) throw UsageError("flashsdpa " + command_ + ": --" + name + " takes no value");
    } else if (!has_inline_value) {
      if (i + 1 >= args.size()) {
        throw UsageError("flashsdpa " + command_ + ": --" + name + " needs a value (" + flag->metavar + ")");
      }
      value = args[++i];
    }
    flag->set(value);
    flag->given = true;
  }
  return true;
}

std::string FlagSet::help() const {
  std::ostringstream out;
  out << "usage: " << usage_ << "\n\n" << description_ << "\n\nflags:\n";
  size_t width = 0;
  std::vector<std::string> heads;
  for (const Flag& flag : flags_) {
    heads.push_back("--" + flag.name + (flag.metavar.empty() ? "" : " " + flag.metavar));
    width = std::max(width, heads.back().size());
  }
  for (size_t i = 0; i < flags_.size(); ++i) {
    out << "  " << heads[i] << std::string(width - heads[i].size() + 2, ' ') << flags_[i].help;
    if (!flags_[i].metavar.empty() && !flags_[i].default_text.empty()) {
      out << " (default " << flags_[i].default_text << ")";
    }
    out << "\n";
  }
  out << "  --help" << std::string(width - 6 + 2, ' ') << "show this help\n";
  return out.str();
}

}  // namespace flashsdpa::cli
