// A small parser for subcommand flags (`--name value` or `--name=value`),
// shared by the binaries. Unknown flags, missing values and missing required
// flags are errors that name the flag.
#ifndef LPD_BASE_CLI_ARGS_H_
#define LPD_BASE_CLI_ARGS_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lpd {

struct FlagSpec {
  std::string name;  // without dashes
  bool required = false;
  bool is_switch = false;  // takes no value ("--verbose")
  std::string help;
};

class CliArgs {
 public:
  // Parses `args` (the words after the subcommand) against `specs`.
  static absl::StatusOr<CliArgs> Parse(const std::vector<std::string>& args,
                                       const std::vector<FlagSpec>& specs);
  // The value of a flag, or `fallback` when absent.
  std::string Get(const std::string& name,
                  const std::string& fallback = "") const;
  bool Has(const std::string& name) const { return values_.contains(name); }
  // An integer flag; InvalidArgument naming the flag when not an integer.
  absl::StatusOr<int64_t> GetInt(const std::string& name,
                                 int64_t fallback) const;
  // A comma-separated list ("a,b,c"), empty items dropped.
  std::vector<std::string> GetList(const std::string& name) const;

  // One line per flag, for usage messages.
  static std::string Usage(const std::vector<FlagSpec>& specs);

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace lpd

#endif  // LPD_BASE_CLI_ARGS_H_
