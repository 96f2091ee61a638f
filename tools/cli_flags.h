// Command-line flags of the flashsdpa tool: a small declarative parser that accepts "--name value"
// and "--name=value", rejects anything it does not know with a message naming the flag, and
// renders the help text from the same declarations so help and parser cannot disagree.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashsdpa::cli {

// A malformed command line. main() prints the message and exits with status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class FlagSet {
 public:
  // `command` is the subcommand name used in messages ("bench"); `usage` is its one-line synopsis.
  FlagSet(std::string command, std::string usage, std::string description);

  void add_switch(const std::string& name, bool* target, const std::string& help);
  void add_int(const std::string& name, int64_t* target, int64_t min_value, const std::string& help,
               const std::string& default_text = "");
  void add_float(const std::string& name, double* target, const std::string& help,
                 const std::string& default_text = "");
  void add_choice(const std::string& name, std::string* target, std::vector<std::string> choices,
                  const std::string& help);
  // "L,R" pairs of integers >= -1, e.g. --window 512,0.
  void add_int_pair(const std::string& name, int64_t* first, int64_t* second, const std::string& help);

  // Parses args (without the program and command names). Returns false when --help was asked for
  // (the help text has been printed). Throws UsageError on an unknown flag or a bad value.
  bool parse(const std::vector<std::string>& args);

  // True when the flag appeared on the command line.
  bool given(const std::string& name) const;

  std::string help() const;
  const std::string& command() const { return command_; }

 private:
  struct Flag {
    std::string name;      // without the leading "--"
    std::string metavar;   // "" for switches
    std::string help;
    std::string default_text;
    std::function<void(const std::string&)> set;  // throws UsageError on a bad value
    bool given = false;
  };
  Flag& add(std::string name, std::string metavar, std::string help, std::string default_text,
            std::function<void(const std::string&)> set);
  Flag* find(const std::string& name);
  [[noreturn]] void bad_value(const std::string& name, const std::string& expected,
                              const std::string& got) const;

  std::string command_, usage_, description_;
  std::vector<Flag> flags_;
};

}  // namespace flashsdpa::cli
