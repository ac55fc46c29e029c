#include "base/cli_args.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lpd {

absl::StatusOr<CliArgs> CliArgs::Parse(const std::vector<std::string>& args,
                                       const std::vector<FlagSpec>& specs) {
  auto find_spec = [&](const std::string& name) -> const FlagSpec* {
    for (const FlagSpec& spec : specs) {
      if (spec.name == name) return &spec;
    }
    return nullptr;
  };
  CliArgs out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument \"", arg, "\" (flags are --name value)"));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = find_spec(name);
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (spec->is_switch) {
      out.values_[name] = value.value_or("true");
      continue;
    }
    if (!value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    }
    out.values_[name] = *value;
  }
  for (const FlagSpec& spec : specs) {
    if (spec.required && !out.values_.contains(spec.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing required flag --", spec.name));
    }
  }
  return out;
}

std::string CliArgs::Get(const std::string& name,
                         const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<int64_t> CliArgs::GetInt(const std::string& name,
                                        int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flag --", name, ": expected an integer, got \"", it->second, "\""));
  }
  return value;
}

std::vector<std::string> CliArgs::GetList(const std::string& name) const {
  return absl::StrSplit(Get(name), ',', absl::SkipWhitespace());
}

std::string CliArgs::Usage(const std::vector<FlagSpec>& specs) {
  std::string text;
  for (const FlagSpec& spec : specs) {
    absl::StrAppend(&text, "  --", spec.name, spec.is_switch ? "" : " VALUE",
                    spec.required ? " (required)" : "", "\n      ", spec.help,
                    "\n");
  }
  return text;
}

}  // namespace lpd
