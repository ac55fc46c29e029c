#include "job/spec.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/numeric/int128.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/types/span.h"
#include "base/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace lpd::job {
namespace {

using ::google::protobuf::Descriptor;
using ::google::protobuf::EnumDescriptor;
using ::google::protobuf::EnumValueDescriptor;
using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::FileDescriptor;
using ::google::protobuf::Message;
using ::google::protobuf::Reflection;
using ::lpd::v1::CompressionJob;
using ::lpd::v1::Criterion;
using ::lpd::v1::DataSpec;
using ::lpd::v1::Device;
using ::lpd::v1::DistillLoss;
using ::lpd::v1::DistillSpec;
using ::lpd::v1::JobMetadata;
using ::lpd::v1::JobSpec;
using ::lpd::v1::Precision;
using ::lpd::v1::PredictionType;
using ::lpd::v1::PruneSpec;
using ::lpd::v1::PruneUnit;

// ---------------------------------------------------------------------------
// Enum spellings.

// The enums whose *_UNSPECIFIED value is spelled "auto" (the worker decides);
// that value of the other enums has no spelling.
constexpr absl::string_view kAutoEnums[] = {
    "lpd.v1.PredictionType", "lpd.v1.Precision", "lpd.v1.Device"};

// The YAML spelling of `value`: its name without the enum's prefix (the
// name of the zero value, less "UNSPECIFIED"), in lower case.
std::string SpellingByRule(const EnumValueDescriptor& value) {
  const EnumDescriptor& type = *value.type();
  if (value.number() == 0) {
    const bool is_auto = std::find(std::begin(kAutoEnums), std::end(kAutoEnums),
                                   type.full_name()) != std::end(kAutoEnums);
    return is_auto ? "auto" : "";
  }
  const absl::string_view prefix =
      absl::StripSuffix(type.FindValueByNumber(0)->name(), "UNSPECIFIED");
  return absl::AsciiStrToLower(absl::StripPrefix(value.name(), prefix));
}

// SpellingByRule, computed once for every enum of job_spec.proto.
absl::string_view Spelling(const EnumValueDescriptor& value) {
  static const auto* const spellings = [] {
    auto* table =
        new absl::flat_hash_map<const EnumValueDescriptor*, std::string>;
    const FileDescriptor& file = *CompressionJob::descriptor()->file();
    for (int i = 0; i < file.enum_type_count(); ++i) {
      const EnumDescriptor& type = *file.enum_type(i);
      for (int j = 0; j < type.value_count(); ++j) {
        table->emplace(type.value(j), SpellingByRule(*type.value(j)));
      }
    }
    return table;
  }();
  const auto it = spellings->find(&value);
  return it == spellings->end() ? absl::string_view() : it->second;
}

// The spellings of `type`'s values, in declaration order.
std::vector<absl::string_view> SpellingsOf(const EnumDescriptor& type) {
  std::vector<absl::string_view> names;
  for (int i = 0; i < type.value_count(); ++i) {
    const absl::string_view name = Spelling(*type.value(i));
    if (!name.empty()) names.push_back(name);
  }
  return names;
}

// The value of `type` spelled `name`, if any.
std::optional<int> EnumNumber(const EnumDescriptor& type,
                              absl::string_view name) {
  if (name.empty()) return std::nullopt;  // "" spells no value
  for (int i = 0; i < type.value_count(); ++i) {
    if (Spelling(*type.value(i)) == name) return type.value(i)->number();
  }
  return std::nullopt;
}

// The spelling of `type`'s value `number` ("" outside the enum).
absl::string_view SpellingOf(const EnumDescriptor& type, int number) {
  const EnumValueDescriptor* value = type.FindValueByNumber(number);
  return value == nullptr ? absl::string_view() : Spelling(*value);
}

// ---------------------------------------------------------------------------
// Text helpers.

// A value for a message: double-quoted, escaped, shortened.
std::string Quote(absl::string_view text) {
  constexpr size_t kMax = 80;
  bool cut = false;
  if (text.size() > kMax) {
    size_t end = kMax;
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) {
      --end;  // do not split a UTF-8 sequence
    }
    text = text.substr(0, end);
    cut = true;
  }
  return absl::StrCat("\"", absl::Utf8SafeCHexEscape(text), cut ? "..." : "",
                      "\"");
}

// Shortest text that reads back as the same double, in YAML 1.2 float
// syntax with a '.' in the mantissa (so YAML 1.1 readers see a float too).
std::string FormatDouble(double value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";
  char buffer[64];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  std::string text(buffer, ec == std::errc() ? end : buffer);
  const size_t exponent = text.find('e');
  std::string mantissa = text.substr(0, exponent);
  if (mantissa.find('.') == std::string::npos) mantissa += ".0";
  return exponent == std::string::npos
             ? mantissa
             : absl::StrCat(mantissa, text.substr(exponent));
}

// Optimal-string-alignment distance (Levenshtein plus adjacent swaps).
int EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<std::vector<int>> d(a.size() + 1,
                                  std::vector<int>(b.size() + 1, 0));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] =
          std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// Lowercase, without '_' and '-': "apiVersion", "api_version" and
// "api-version" all become "apiversion".
std::string Folded(absl::string_view text) {
  std::string folded;
  for (char c : text) {
    if (c != '_' && c != '-') folded.push_back(absl::ascii_tolower(c));
  }
  return folded;
}

// The candidate `text` was most likely meant as, if any is close enough.
std::optional<absl::string_view> Suggest(
    absl::string_view text, absl::Span<const absl::string_view> candidates) {
  if (text.size() > 64) return std::nullopt;
  const std::string folded = Folded(text);
  std::optional<absl::string_view> best;
  int best_distance = 1 << 30;
  for (absl::string_view candidate : candidates) {
    const std::string folded_candidate = Folded(candidate);
    int distance = EditDistance(folded, folded_candidate);
    // A clear abbreviation ("eps" for "epsilon") counts as close.
    if (folded.size() >= 3 && absl::StartsWith(folded_candidate, folded)) {
      distance = std::min(distance, 1);
    }
    // Short names only up to case and separators: "gpu" is not "cpu".
    const size_t length = candidate.size();
    const int allowed = length <= 4 ? 0 : length <= 8 ? 2 : 3;
    if (distance <= allowed && distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

std::string DidYouMean(absl::string_view text,
                       absl::Span<const absl::string_view> candidates) {
  if (auto suggestion = Suggest(text, candidates)) {
    return absl::StrCat(" (did you mean \"", *suggestion, "\"?)");
  }
  return "";
}

std::string ChildPath(absl::string_view parent, absl::string_view key) {
  return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
}

// A key from the document as a path component: as is when it is a short
// name, else quoted and shortened (`spec["a key"]`).
std::string KeyPath(absl::string_view parent, absl::string_view key) {
  const bool name = !key.empty() && key.size() <= 64 &&
                    std::all_of(key.begin(), key.end(), [](char c) {
                      return absl::ascii_isalnum(c) || c == '_' || c == '-';
                    });
  if (name) return ChildPath(parent, key);
  return absl::StrCat(parent, "[", Quote(key), "]");
}

// ---------------------------------------------------------------------------
// Plain scalars, resolved as the YAML 1.2 core schema does.

bool IsNullText(absl::string_view s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

std::optional<bool> BoolFromText(absl::string_view s) {
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  return std::nullopt;
}

bool AllDigits(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), absl::ascii_isdigit);
}

absl::string_view WithoutSign(absl::string_view s) {
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  return s;
}

// [-+]?[0-9]+
bool IsIntText(absl::string_view s) { return AllDigits(WithoutSign(s)); }

bool IsInfOrNanText(absl::string_view s) {
  const absl::string_view unsigned_part = WithoutSign(s);
  return unsigned_part == ".inf" || unsigned_part == ".Inf" ||
         unsigned_part == ".INF" || s == ".nan" || s == ".NaN" || s == ".NAN";
}

// [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? or .inf/.nan forms.
bool IsFloatText(absl::string_view s) {
  if (IsInfOrNanText(s)) return true;
  s = WithoutSign(s);
  const size_t e = s.find_first_of("eE");
  absl::string_view mantissa = s.substr(0, e);
  if (e != absl::string_view::npos) {
    if (!IsIntText(s.substr(e + 1))) return false;
  }
  const size_t dot = mantissa.find('.');
  if (dot == absl::string_view::npos) return AllDigits(mantissa);
  const absl::string_view whole = mantissa.substr(0, dot);
  const absl::string_view fraction = mantissa.substr(dot + 1);
  if (whole.empty()) return AllDigits(fraction);
  return AllDigits(whole) && (fraction.empty() || AllDigits(fraction));
}

bool IsNumberText(absl::string_view s) {
  return IsIntText(s) || IsFloatText(s);
}

// Parses text that IsNumberText accepts. False when out of double range.
bool ParseDouble(absl::string_view s, double* value) {
  if (IsInfOrNanText(s)) {
    if (absl::EndsWithIgnoreCase(s, "nan")) {
      *value = std::nan("");
    } else {
      *value = s[0] == '-' ? -HUGE_VAL : HUGE_VAL;
    }
    return true;
  }
  const bool negative = !s.empty() && s[0] == '-';
  s = WithoutSign(s);
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *value);
  if (ec != std::errc() || end != s.data() + s.size()) return false;
  if (negative) *value = -*value;
  return true;
}

// ---------------------------------------------------------------------------
// Problems.

struct Problem {
  std::string path;
  std::string message;
  int line = -1;  // 0-based, as YAML::Mark; -1: no position
  int column = -1;
};

void SetPosition(const YAML::Mark& mark, Problem* problem) {
  if (mark.is_null()) return;
  problem->line = mark.line;
  problem->column = mark.column;
}

std::string FormatProblem(absl::string_view source, const Problem& problem) {
  std::vector<std::string> where;
  if (!source.empty()) where.emplace_back(source);
  if (problem.line >= 0) {
    where.push_back(absl::StrCat(problem.line + 1, ":", problem.column + 1));
  }
  std::string text = absl::StrJoin(where, ":");
  if (!text.empty()) text += ": ";
  if (!problem.path.empty()) absl::StrAppend(&text, problem.path, ": ");
  absl::StrAppend(&text, problem.message);
  return text;
}

absl::Status ProblemsToStatus(absl::string_view source,
                              const std::vector<Problem>& problems) {
  if (problems.empty()) return absl::OkStatus();
  std::vector<std::string> lines;
  for (const Problem& problem : problems) {
    if (static_cast<int>(lines.size()) == kMaxReportedErrors) {
      lines.push_back(
          absl::StrCat("... and ", problems.size() - lines.size(), " more"));
      break;
    }
    lines.push_back(FormatProblem(source, problem));
  }
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

// ---------------------------------------------------------------------------
// Validation of a message (with defaults applied).

constexpr absl::string_view kUriShapes =
    "a file:///absolute/path or s3://bucket/prefix URI";

bool IsLowerAlnum(char c) {
  return absl::ascii_isdigit(c) || (c >= 'a' && c <= 'z');
}

// RFC 1123 label: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63.
bool IsDnsLabel(absl::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  if (!IsLowerAlnum(s.front()) || !IsLowerAlnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return IsLowerAlnum(c) || c == '-'; });
}

// Kubernetes label name: ([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9], <= 63.
bool IsLabelName(absl::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  if (!absl::ascii_isalnum(s.front()) || !absl::ascii_isalnum(s.back())) {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
  });
}

// Kubernetes label key: [DNS subdomain '/'] name.
bool IsLabelKey(absl::string_view s) {
  const size_t slash = s.find('/');
  if (slash == absl::string_view::npos) return IsLabelName(s);
  const absl::string_view prefix = s.substr(0, slash);
  if (prefix.empty() || prefix.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(prefix, '.')) {
    if (!IsDnsLabel(label)) return false;
  }
  return IsLabelName(s.substr(slash + 1));
}

// S3 bucket: 3-63 of [a-z0-9.-], starting and ending with a letter or digit.
bool IsS3Bucket(absl::string_view s) {
  if (s.size() < 3 || s.size() > 63) return false;
  if (!IsLowerAlnum(s.front()) || !IsLowerAlnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return IsLowerAlnum(c) || c == '-' || c == '.';
  });
}

class Checker {
 public:
  explicit Checker(std::vector<Problem>* problems) : problems_(problems) {}

  void Add(std::string path, std::string message) {
    problems_->push_back({std::move(path), std::move(message)});
  }

  void AtLeast(const std::string& path, int64_t value, int64_t minimum) {
    if (value < minimum) {
      Add(path, absl::StrCat("must be >= ", minimum, ", got ", value));
    }
  }

  // Finite and >= 0 (or > 0 when `strict`).
  void NonNegative(const std::string& path, double value, bool strict) {
    if (!std::isfinite(value)) {
      Add(path,
          absl::StrCat("must be a finite number, got ", FormatDouble(value)));
    } else if (strict ? !(value > 0) : !(value >= 0)) {
      Add(path, absl::StrCat("must be ", strict ? ">" : ">=", " 0, got ",
                             FormatDouble(value)));
    }
  }

  // A URI of one of the supported shapes; true when it is one.
  bool Uri(const std::string& path, const std::string& uri) {
    if (uri.empty()) {
      Add(path, absl::StrCat("required (", kUriShapes, ")"));
      return false;
    }
    if (std::any_of(uri.begin(), uri.end(), [](char c) {
          return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
        })) {
      Add(path, absl::StrCat("must not contain control characters, got ",
                             Quote(uri)));
      return false;
    }
    const size_t separator = uri.find("://");
    if (separator == std::string::npos) {
      std::string message =
          absl::StrCat("must be ", kUriShapes, ", got ", Quote(uri));
      if (uri[0] == '/') {
        absl::StrAppend(&message, " (did you mean ",
                        Quote(absl::StrCat("file://", uri)), "?)");
      }
      Add(path, std::move(message));
      return false;
    }
    const absl::string_view scheme =
        absl::string_view(uri).substr(0, separator);
    const absl::string_view rest = absl::string_view(uri).substr(separator + 3);
    if (scheme == "file") {
      if (rest.empty() || rest[0] != '/') {
        Add(path, absl::StrCat("must be file:///absolute/path (three slashes: "
                               "an empty host, then an absolute path), got ",
                               Quote(uri)));
        return false;
      }
      if (rest == "/") {
        Add(path,
            absl::StrCat("must name a folder, not the root, got ", Quote(uri)));
        return false;
      }
      return Segments(path, uri, rest.substr(1));
    }
    if (scheme == "s3") {
      const size_t slash = rest.find('/');
      const absl::string_view bucket = rest.substr(0, slash);
      if (bucket.empty()) {
        Add(path, absl::StrCat("must name a bucket (s3://bucket/prefix), got ",
                               Quote(uri)));
        return false;
      }
      if (!IsS3Bucket(bucket)) {
        Add(path, absl::StrCat("bucket ", Quote(bucket),
                               " is not a valid S3 bucket name (3-63 "
                               "lowercase letters, digits, '.' and '-', "
                               "starting and ending with a letter or digit)"));
        return false;
      }
      if (slash == absl::string_view::npos) return true;
      return Segments(path, uri, rest.substr(slash + 1));
    }
    Add(path, absl::StrCat("unsupported scheme ", Quote(scheme), "; must be ",
                           kUriShapes, ", got ", Quote(uri)));
    return false;
  }

 private:
  // The part after the root or bucket: no "//", "." or ".." segments; one
  // trailing '/' is fine.
  bool Segments(const std::string& path, const std::string& uri,
                absl::string_view tail) {
    if (absl::EndsWith(tail, "/")) tail.remove_suffix(1);
    if (tail.empty()) return true;
    for (absl::string_view segment : absl::StrSplit(tail, '/')) {
      if (segment.empty()) {
        Add(path, absl::StrCat("must not contain empty path segments (\"//\"), "
                               "got ",
                               Quote(uri)));
        return false;
      }
      if (segment == "." || segment == "..") {
        Add(path, absl::StrCat("must not contain \".\" or \"..\" segments, "
                               "got ",
                               Quote(uri)));
        return false;
      }
    }
    return true;
  }

  std::vector<Problem>* problems_;
};

std::string AsFolder(const std::string& uri) {
  return absl::EndsWith(uri, "/") ? uri : uri + "/";
}

// `job` has its defaults applied.
void CheckJob(const CompressionJob& job, std::vector<Problem>* problems) {
  Checker check(problems);

  if (job.api_version().empty()) {
    check.Add("apiVersion", absl::StrCat("required (\"", kApiVersion, "\")"));
  } else if (job.api_version() != kApiVersion) {
    check.Add("apiVersion", absl::StrCat("must be \"", kApiVersion, "\", got ",
                                         Quote(job.api_version())));
  }
  if (job.kind().empty()) {
    check.Add("kind", absl::StrCat("required (\"", kJobKind, "\")"));
  } else if (job.kind() != kJobKind) {
    check.Add("kind", absl::StrCat("must be \"", kJobKind, "\", got ",
                                   Quote(job.kind())));
  }

  const JobMetadata& metadata = job.metadata();
  if (metadata.name().empty()) {
    check.Add("metadata.name", "required");
  } else if (!IsDnsLabel(metadata.name())) {
    check.Add("metadata.name",
              absl::StrCat("must be a DNS label (at most 63 lowercase "
                           "letters, digits and '-', starting and ending "
                           "with a letter or digit), got ",
                           Quote(metadata.name())));
  }
  if (metadata.labels_size() > kMaxLabels) {
    check.Add("metadata.labels",
              absl::StrCat("at most ", kMaxLabels, " labels, got ",
                           metadata.labels_size()));
  }
  const std::map<std::string, std::string> labels(metadata.labels().begin(),
                                                  metadata.labels().end());
  for (const auto& [key, value] : labels) {
    const std::string path = absl::StrCat("metadata.labels[", Quote(key), "]");
    if (!IsLabelKey(key)) {
      check.Add(path, absl::StrCat("invalid label key ", Quote(key),
                                   ": at most 63 letters, digits, '.', '_' "
                                   "and '-', starting and ending with a "
                                   "letter or digit, optionally after a "
                                   "DNS prefix and '/'"));
    }
    if (!value.empty() && !IsLabelName(value)) {
      check.Add(path, absl::StrCat("invalid label value ", Quote(value),
                                   ": empty, or at most 63 letters, digits, "
                                   "'.', '_' and '-', starting and ending "
                                   "with a letter or digit"));
    }
  }

  const JobSpec& spec = job.spec();
  const bool model_ok = check.Uri("spec.model.uri", spec.model().uri());
  if (!lpd::v1::PredictionType_IsValid(spec.model().prediction_type())) {
    check.Add("spec.model.prediction_type",
              absl::StrCat("unknown value ", spec.model().prediction_type()));
  }

  const DataSpec& data = spec.data();
  const bool train_ok = check.Uri("spec.data.train.uri", data.train().uri());
  check.AtLeast("spec.data.calibration_samples", data.calibration_samples(), 1);
  check.AtLeast("spec.data.eval_samples", data.eval_samples(), 0);

  const PruneSpec& prune = spec.prune();
  if (!(prune.target_ratio() > 0 && prune.target_ratio() < 1)) {
    check.Add("spec.prune.target_ratio",
              absl::StrCat("must be in (0, 1), got ",
                           FormatDouble(prune.target_ratio())));
  }
  if (!lpd::v1::Criterion_IsValid(prune.criterion()) ||
      prune.criterion() == lpd::v1::CRITERION_UNSPECIFIED) {
    check.Add("spec.prune.criterion",
              absl::StrCat("unknown value ", prune.criterion()));
  }
  check.AtLeast("spec.prune.additivity_sets", prune.additivity_sets(), 0);
  if (prune.additivity_sets() > kMaxAdditivitySets) {
    check.Add("spec.prune.additivity_sets",
              absl::StrCat("must be <= ", kMaxAdditivitySets, ", got ",
                           prune.additivity_sets()));
  }
  bool has[4] = {false, false, false, false};
  bool units_ok = true;
  for (int i = 0; i < prune.units_size(); ++i) {
    const int unit = prune.units(i);
    const std::string path = absl::StrCat("spec.prune.units[", i, "]");
    if (!lpd::v1::PruneUnit_IsValid(unit) ||
        unit == lpd::v1::PRUNE_UNIT_UNSPECIFIED) {
      check.Add(path, absl::StrCat("unknown value ", unit));
      units_ok = false;
    } else if (has[unit]) {
      check.Add(path,
                absl::StrCat("duplicate ", Quote(YamlName(prune.units(i)))));
      units_ok = false;
    } else {
      has[unit] = true;
    }
  }
  if (units_ok) {
    const bool attention = has[lpd::v1::PRUNE_UNIT_ATTENTION];
    const bool block = has[lpd::v1::PRUNE_UNIT_TRANSFORMER_BLOCK];
    if (!has[lpd::v1::PRUNE_UNIT_RESNET]) {
      check.Add("spec.prune.units", "must include resnet");
    }
    if (attention && block) {
      check.Add("spec.prune.units",
                "attention and transformer_block exclude each other (whole "
                "transformers or single blocks): list one of them");
    } else if (!attention && !block) {
      check.Add("spec.prune.units",
                "must include attention or transformer_block");
    }
  }

  const DistillSpec& distill = spec.distill();
  check.AtLeast("spec.distill.steps", distill.steps(), 0);
  check.AtLeast("spec.distill.batch_size", distill.batch_size(), 1);
  check.NonNegative("spec.distill.learning_rate", distill.learning_rate(),
                    /*strict=*/true);
  check.NonNegative("spec.distill.weight_decay", distill.weight_decay(),
                    /*strict=*/false);
  check.NonNegative("spec.distill.grad_clip_norm", distill.grad_clip_norm(),
                    /*strict=*/false);
  if (distill.warmup_steps() < 0) {
    check.AtLeast("spec.distill.warmup_steps", distill.warmup_steps(), 0);
  } else if (distill.steps() >= 0 && distill.warmup_steps() > distill.steps()) {
    check.Add("spec.distill.warmup_steps",
              absl::StrCat("must be <= spec.distill.steps (", distill.steps(),
                           "), got ", distill.warmup_steps()));
  }
  const DistillLoss& loss = distill.loss();
  const size_t before_loss = problems->size();
  check.NonNegative("spec.distill.loss.task", loss.task(), false);
  check.NonNegative("spec.distill.loss.output_kd", loss.output_kd(), false);
  check.NonNegative("spec.distill.loss.feature_kd", loss.feature_kd(), false);
  if (problems->size() == before_loss && loss.task() == 0 &&
      loss.output_kd() == 0 && loss.feature_kd() == 0) {
    check.Add("spec.distill.loss",
              "task, output_kd and feature_kd are all 0: at least one must "
              "be > 0");
  }
  if (!lpd::v1::Precision_IsValid(distill.precision())) {
    check.Add("spec.distill.precision",
              absl::StrCat("unknown value ", distill.precision()));
  } else if (distill.master_weights_fp32() &&
             distill.precision() == lpd::v1::PRECISION_FP32) {
    check.Add("spec.distill.master_weights_fp32",
              "applies only to precision bf16 (or auto); with fp32 the "
              "weights are fp32 already");
  }
  check.AtLeast("spec.distill.checkpoint_every", distill.checkpoint_every(), 1);
  if (distill.gpus() < 1 || distill.gpus() > kMaxDistillGpus) {
    check.Add("spec.distill.gpus",
              absl::StrCat("must be in [1, ", kMaxDistillGpus, "], got ",
                           distill.gpus()));
  } else if (distill.batch_size() >= 1 &&
             distill.batch_size() % distill.gpus() != 0) {
    check.Add("spec.distill.batch_size",
              absl::StrCat("must be a multiple of spec.distill.gpus (",
                           distill.gpus(),
                           "): each rank takes an equal "
                           "share of the batch, got ",
                           distill.batch_size()));
  }

  const bool output_ok = check.Uri("spec.output.uri", spec.output().uri());
  if (output_ok) {
    const std::string output = AsFolder(spec.output().uri());
    if (model_ok && absl::StartsWith(output, AsFolder(spec.model().uri()))) {
      check.Add("spec.output.uri",
                absl::StrCat("must not be spec.model.uri or lie inside it, "
                             "got ",
                             Quote(spec.output().uri())));
    }
    if (train_ok &&
        absl::StartsWith(output, AsFolder(spec.data().train().uri()))) {
      check.Add("spec.output.uri",
                absl::StrCat("must not be spec.data.train.uri or lie inside "
                             "it, got ",
                             Quote(spec.output().uri())));
    }
  }
  if (!lpd::v1::Device_IsValid(spec.device())) {
    check.Add("spec.device", absl::StrCat("unknown value ", spec.device()));
  }
}

// ---------------------------------------------------------------------------
// Values as YAML text.

// A string as a YAML scalar: plain when that reads back as the same string,
// double-quoted otherwise.
std::string YamlString(absl::string_view text) {
  const bool plain =
      !text.empty() && !IsNullText(text) && !BoolFromText(text) &&
      !IsNumberText(text) && !absl::EndsWith(text, ":") &&
      (absl::ascii_isalnum(text[0]) || text[0] == '/' || text[0] == '_' ||
       text[0] == '.') &&
      std::all_of(text.begin(), text.end(), [](char c) {
        return absl::ascii_isalnum(c) ||
               absl::string_view("_./:+=-").find(c) != absl::string_view::npos;
      });
  if (plain) return std::string(text);
  std::string quoted = "\"";
  for (char c : text) {
    const unsigned char byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      quoted.push_back('\\');
      quoted.push_back(c);
    } else if (byte < 0x20 || byte == 0x7f) {
      constexpr char kHex[] = "0123456789abcdef";
      quoted += "\\x";
      quoted.push_back(kHex[byte >> 4]);
      quoted.push_back(kHex[byte & 0xf]);
    } else {
      quoted.push_back(c);  // UTF-8 passes through
    }
  }
  quoted += "\"";
  return quoted;
}

// `field` of `message` as a YAML scalar (element `index` of a repeated
// field). Enums by their spelling, or their number for a value outside the
// enum (which ValidateJobSpec rejects).
std::string ScalarText(const Message& message, const FieldDescriptor& field,
                       int index = -1) {
  const Reflection& r = *message.GetReflection();
  const FieldDescriptor* f = &field;
  const bool element = field.is_repeated();
  switch (field.cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      return YamlString(element ? r.GetRepeatedString(message, f, index)
                                : r.GetString(message, f));
    case FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(element ? r.GetRepeatedInt32(message, f, index)
                                  : r.GetInt32(message, f));
    case FieldDescriptor::CPPTYPE_INT64:
      return absl::StrCat(element ? r.GetRepeatedInt64(message, f, index)
                                  : r.GetInt64(message, f));
    case FieldDescriptor::CPPTYPE_UINT32:
      return absl::StrCat(element ? r.GetRepeatedUInt32(message, f, index)
                                  : r.GetUInt32(message, f));
    case FieldDescriptor::CPPTYPE_UINT64:
      return absl::StrCat(element ? r.GetRepeatedUInt64(message, f, index)
                                  : r.GetUInt64(message, f));
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return FormatDouble(element ? r.GetRepeatedDouble(message, f, index)
                                  : r.GetDouble(message, f));
    case FieldDescriptor::CPPTYPE_BOOL:
      return (element ? r.GetRepeatedBool(message, f, index)
                      : r.GetBool(message, f))
                 ? "true"
                 : "false";
    case FieldDescriptor::CPPTYPE_ENUM: {
      const int number = element ? r.GetRepeatedEnumValue(message, f, index)
                                 : r.GetEnumValue(message, f);
      const absl::string_view name = SpellingOf(*field.enum_type(), number);
      return name.empty() ? absl::StrCat(number) : std::string(name);
    }
    default:  // float and messages: not in the schema
      return "";
  }
}

// Repeated `field` of `message` as a YAML flow sequence: `[a, b]`.
std::string FlowList(const Message& message, const FieldDescriptor& field) {
  std::vector<std::string> items;
  for (int i = 0; i < message.GetReflection()->FieldSize(message, &field);
       ++i) {
    items.push_back(ScalarText(message, field, i));
  }
  return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
}

// The YAML key of `field`: its json_name where the .proto sets one
// (`apiVersion`), else its name.
absl::string_view YamlKey(const FieldDescriptor& field) {
  return field.has_json_name() ? field.json_name() : field.name();
}

// ---------------------------------------------------------------------------
// Reading YAML into the message.

// One entry of a YAML mapping.
struct Entry {
  YAML::Node key;
  YAML::Node value;
};

using Entries = std::map<std::string, Entry, std::less<>>;

std::string Describe(const YAML::Node& node) {
  if (node.IsNull()) return "null";
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a sequence";
  const std::string& text = node.Scalar();
  if (node.Tag() == "?" && (IsNumberText(text) || BoolFromText(text))) {
    return text;
  }
  return Quote(text);
}

bool IsPlain(const YAML::Node& node) {
  return node.IsScalar() && node.Tag() == "?";
}

bool IsQuoted(const YAML::Node& node) {
  return node.IsScalar() && node.Tag() == "!";
}

// Reads a YAML document into a job by walking the message descriptors:
// each mapping's keys are the YAML keys of its message's fields (YamlKey),
// read in declaration order. The shapes it reads, all the schema uses:
// singular strings, integers, doubles, booleans, enums and messages;
// repeated scalars and enums (sequences); map<string, scalar> (mappings).
class SpecReader {
 public:
  std::vector<Problem> problems;

  // Reads the document's root into `job`; false if it is not a mapping.
  bool ReadJob(const YAML::Node& root, CompressionJob* job) {
    CompressionJob defaults;
    ApplyDefaults(&defaults);
    marks_[""] = root.Mark();
    return ReadMessage({root, root}, "", defaults, job);
  }

  // Adds a problem from CheckJob, placed at its field (or the nearest
  // ancestor the document has); drops it if it concerns a value already
  // reported as unreadable.
  void AddCheckProblem(Problem problem) {
    for (const std::string& failed : failed_) {
      if (Related(problem.path, failed)) return;
    }
    std::string path = problem.path;
    while (true) {
      if (auto it = marks_.find(path); it != marks_.end()) {
        SetPosition(it->second, &problem);
        break;
      }
      if (path.empty()) break;
      path = ParentPath(path);
    }
    problems.push_back(std::move(problem));
  }

 private:
  static const Entry* Find(const Entries& entries, absl::string_view key) {
    auto it = entries.find(key);
    return it == entries.end() ? nullptr : &it->second;
  }

  // "a.b" and "a.b.c" or "a.b[1]" are related; "a.b" and "a.bc" are not.
  static bool Related(absl::string_view a, absl::string_view b) {
    if (a.size() > b.size()) std::swap(a, b);
    if (!absl::StartsWith(b, a)) return false;
    return b.size() == a.size() || b[a.size()] == '.' || b[a.size()] == '[';
  }

  static std::string ParentPath(absl::string_view path) {
    if (absl::EndsWith(path, "\"]")) {
      return std::string(path.substr(0, path.rfind("[\"")));
    }
    const size_t cut = path.find_last_of(".[");
    return cut == absl::string_view::npos ? ""
                                          : std::string(path.substr(0, cut));
  }

  void Fail(const std::string& path, const YAML::Mark& mark,
            std::string message) {
    Problem problem{path, std::move(message)};
    SetPosition(mark, &problem);
    problems.push_back(std::move(problem));
    failed_.push_back(path);
  }

  // Where a value's problems point: the value, or its key when it is null
  // (yaml-cpp places a missing value at the next token).
  static YAML::Mark ValueMark(const Entry& entry) {
    return entry.value.IsNull() ? entry.key.Mark() : entry.value.Mark();
  }

  // Records `entry`'s position for `path`; false (and a problem) if the
  // value carries an explicit tag.
  bool Begin(const Entry& entry, const std::string& path) {
    marks_[path] = ValueMark(entry);
    const std::string& tag = entry.value.Tag();
    if (!tag.empty() && tag != "?" && tag != "!") {
      Fail(path, ValueMark(entry),
           absl::StrCat("unsupported YAML tag ", Quote(tag),
                        "; write the value without a tag"));
      return false;
    }
    return true;
  }

  // Reports `key` at `child` if `seen` has it already; true if so.
  bool Duplicate(const YAML::Node& key, const std::string& child,
                 std::map<std::string, YAML::Mark>* seen) {
    const auto [previous, inserted] = seen->emplace(key.Scalar(), key.Mark());
    if (inserted) return false;
    Fail(
        child, key.Mark(),
        absl::StrCat("duplicate key (first at line ", previous->second.line + 1,
                     ", column ", previous->second.column + 1, ")"));
    return true;
  }

  // Collects the keys of a mapping. Unknown, duplicate and non-scalar keys
  // are reported; false if the value is not a mapping.
  bool Mapping(const Entry& entry, const std::string& path,
               absl::Span<const absl::string_view> known, Entries* entries) {
    if (!Begin(entry, path)) return false;
    marks_[path] = entry.key.Mark();  // a mapping's problems: at its key
    if (!entry.value.IsMap()) {
      Fail(path, ValueMark(entry),
           absl::StrCat("expected a mapping with ", absl::StrJoin(known, ", "),
                        "; got ", Describe(entry.value)));
      return false;
    }
    std::map<std::string, YAML::Mark> seen;
    for (auto it = entry.value.begin(); it != entry.value.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar()) {
        Fail(path, key.Mark(),
             absl::StrCat("keys must be names, got ", Describe(key)));
        continue;
      }
      const std::string& name = key.Scalar();
      const std::string child = KeyPath(path, name);
      if (Duplicate(key, child, &seen)) continue;
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        std::string message = "unknown field";
        if (auto suggestion = Suggest(name, known)) {
          absl::StrAppend(&message, " (did you mean \"", *suggestion, "\"?)");
        } else {
          absl::StrAppend(&message,
                          "; known fields: ", absl::StrJoin(known, ", "));
        }
        Problem problem{child, std::move(message)};
        SetPosition(key.Mark(), &problem);
        problems.push_back(std::move(problem));
        continue;
      }
      entries->emplace(name, Entry{key, it->second});
    }
    return true;
  }

  // Reads a mapping into `message`; `defaults` is the same message with
  // the defaults applied. False if the value is not a mapping.
  bool ReadMessage(const Entry& entry, const std::string& path,
                   const Message& defaults, Message* message) {
    const Descriptor& type = *message->GetDescriptor();
    std::vector<absl::string_view> keys;
    for (int i = 0; i < type.field_count(); ++i) {
      keys.push_back(YamlKey(*type.field(i)));
    }
    Entries entries;
    if (!Mapping(entry, path, keys, &entries)) return false;
    for (int i = 0; i < type.field_count(); ++i) {
      const FieldDescriptor& field = *type.field(i);
      const Entry* e = Find(entries, keys[i]);
      if (e == nullptr) continue;
      const std::string child = ChildPath(path, keys[i]);
      if (field.is_map()) {
        ReadMap(*e, child, field, message);
      } else if (field.is_repeated()) {
        ReadList(*e, child, field, defaults, message);
      } else {
        ReadValue(*e, child, field, defaults, message);
      }
    }
    return true;
  }

  // Reads a sequence into repeated `field`. One with a default (in
  // `defaults`) must not be empty: leaving it out gives the default.
  void ReadList(const Entry& entry, const std::string& path,
                const FieldDescriptor& field, const Message& defaults,
                Message* message) {
    if (!Begin(entry, path)) return;
    const bool has_default =
        defaults.GetReflection()->FieldSize(defaults, &field) > 0;
    const std::string default_list = FlowList(defaults, field);
    if (!entry.value.IsSequence()) {
      Fail(path, ValueMark(entry),
           absl::StrCat("expected a sequence",
                        has_default ? " such as " + default_list : "", ", got ",
                        Describe(entry.value)));
      return;
    }
    if (has_default && entry.value.size() == 0) {
      Fail(path, ValueMark(entry),
           absl::StrCat("must not be empty (leave it out for the default ",
                        default_list, ")"));
      return;
    }
    int index = 0;
    for (const YAML::Node& item : entry.value) {
      // A null item has no position of its own: use the sequence's.
      const Entry element{item.IsNull() ? entry.value : item, item};
      ReadValue(element, absl::StrCat(path, "[", index++, "]"), field, defaults,
                message);
    }
  }

  // Reads a mapping into map `field`, whose keys are strings. Messages
  // call the keys by the field's name: "label names" for `labels`.
  void ReadMap(const Entry& entry, const std::string& path,
               const FieldDescriptor& field, Message* message) {
    if (!Begin(entry, path)) return;
    marks_[path] = entry.key.Mark();
    const absl::string_view noun = absl::StripSuffix(field.name(), "s");
    if (!entry.value.IsMap()) {
      Fail(path, ValueMark(entry),
           absl::StrCat("expected a mapping of ", noun,
                        " names to values, got ", Describe(entry.value)));
      return;
    }
    const Reflection& r = *message->GetReflection();
    const Descriptor& pair = *field.message_type();
    const Message& no_defaults = *r.GetMessageFactory()->GetPrototype(&pair);
    std::map<std::string, YAML::Mark> seen;
    for (auto it = entry.value.begin(); it != entry.value.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar()) {
        Fail(path, key.Mark(),
             absl::StrCat(noun, " names must be strings, got ", Describe(key)));
        continue;
      }
      const std::string child =
          absl::StrCat(path, "[", Quote(key.Scalar()), "]");
      if (Duplicate(key, child, &seen)) continue;
      Message* item = r.AddMessage(message, &field);
      item->GetReflection()->SetString(item, pair.map_key(), key.Scalar());
      if (ReadValue({key, it->second}, child, *pair.map_value(), no_defaults,
                    item)) {
        marks_[child] = key.Mark();
      } else {
        r.RemoveLast(message, &field);
      }
    }
  }

  // Reads one value of `field` into `message`: the field, or a new element
  // when it is repeated. False (with a problem) if it cannot be read.
  bool ReadValue(const Entry& entry, const std::string& path,
                 const FieldDescriptor& field, const Message& defaults,
                 Message* message) {
    const Reflection& r = *message->GetReflection();
    const FieldDescriptor* f = &field;
    const bool add = field.is_repeated();
    switch (field.cpp_type()) {
      case FieldDescriptor::CPPTYPE_MESSAGE:
        if (add) break;  // repeated messages: not in the schema
        return ReadMessage(entry, path,
                           defaults.GetReflection()->GetMessage(defaults, f),
                           r.MutableMessage(message, f));
      case FieldDescriptor::CPPTYPE_STRING:
        if (auto v = String(entry, path)) {
          add ? r.AddString(message, f, *v) : r.SetString(message, f, *v);
          return true;
        }
        return false;
      case FieldDescriptor::CPPTYPE_INT32:
        if (auto v = Integer<int32_t>(entry, path)) {
          add ? r.AddInt32(message, f, *v) : r.SetInt32(message, f, *v);
          return true;
        }
        return false;
      case FieldDescriptor::CPPTYPE_INT64:
        if (auto v = Integer<int64_t>(entry, path)) {
          add ? r.AddInt64(message, f, *v) : r.SetInt64(message, f, *v);
          return true;
        }
        return false;
      case FieldDescriptor::CPPTYPE_UINT32:
        if (auto v = Integer<uint32_t>(entry, path)) {
          add ? r.AddUInt32(message, f, *v) : r.SetUInt32(message, f, *v);
          return true;
        }
        return false;
      case FieldDescriptor::CPPTYPE_UINT64:
        if (auto v = Integer<uint64_t>(entry, path)) {
          add ? r.AddUInt64(message, f, *v) : r.SetUInt64(message, f, *v);
          return true;
        }
        return false;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        if (auto v = Double(entry, path)) {
          add ? r.AddDouble(message, f, *v) : r.SetDouble(message, f, *v);
          return true;
        }
        return false;
      case FieldDescriptor::CPPTYPE_BOOL:
        if (auto v = Bool(entry, path)) {
          add ? r.AddBool(message, f, *v) : r.SetBool(message, f, *v);
          return true;
        }
        return false;
      case FieldDescriptor::CPPTYPE_ENUM:
        if (auto v = Enum(entry, path, *field.enum_type())) {
          add ? r.AddEnumValue(message, f, *v) : r.SetEnumValue(message, f, *v);
          return true;
        }
        return false;
      default:  // float: not in the schema
        break;
    }
    Fail(path, ValueMark(entry),
         "internal error: the YAML reader does not support this field");
    return false;
  }

  std::optional<std::string> String(const Entry& entry,
                                    const std::string& path) {
    if (!Begin(entry, path)) return std::nullopt;
    if (!entry.value.IsScalar()) {
      Fail(path, ValueMark(entry),
           absl::StrCat("expected a string, got ", Describe(entry.value)));
      return std::nullopt;
    }
    return entry.value.Scalar();
  }

  // The hint for a quoted number or boolean where one is expected.
  static std::string QuotedHint(const YAML::Node& node,
                                absl::string_view what) {
    if (!IsQuoted(node)) return "";
    return absl::StrCat(" (a quoted string: write ", what, " without quotes)");
  }

  // An integer in [minimum, maximum]: digits, or float notation with an
  // integral value ("2e4").
  std::optional<absl::int128> IntegerIn(const Entry& entry,
                                        const std::string& path,
                                        int64_t minimum, uint64_t maximum) {
    if (!Begin(entry, path)) return std::nullopt;
    const YAML::Node& node = entry.value;
    const std::string text = node.IsScalar() ? node.Scalar() : "";
    auto expected = [&] {
      Fail(path, ValueMark(entry),
           absl::StrCat("expected an integer, got ", Describe(node),
                        IsNumberText(text) ? QuotedHint(node, "numbers") : ""));
      return std::nullopt;
    };
    if (!IsPlain(node) || !IsNumberText(text)) return expected();
    absl::int128 value;
    bool in_range = true;
    if (IsIntText(text)) {
      // SimpleAtoi fails only on overflow here: the text is all digits.
      in_range = absl::SimpleAtoi(text, &value);
    } else {
      double real = 0;
      const bool finite = ParseDouble(text, &real) && std::isfinite(real);
      if (finite && real != std::trunc(real)) return expected();
      if (!finite && IsInfOrNanText(text)) return expected();
      in_range = finite && std::fabs(real) < 1e38;
      if (in_range) value = absl::int128(real);
    }
    if (!in_range || value > absl::int128(maximum)) {
      const bool negative = text[0] == '-';
      Fail(path, ValueMark(entry),
           negative ? absl::StrCat("must be >= ", minimum, ", got ", text)
                    : absl::StrCat("must be <= ", maximum, ", got ", text));
      return std::nullopt;
    }
    if (value < absl::int128(minimum)) {
      Fail(path, ValueMark(entry),
           absl::StrCat("must be >= ", minimum, ", got ", text));
      return std::nullopt;
    }
    return value;
  }

  template <typename T>
  std::optional<T> Integer(const Entry& entry, const std::string& path) {
    const auto value = IntegerIn(entry, path, std::numeric_limits<T>::min(),
                                 std::numeric_limits<T>::max());
    if (!value) return std::nullopt;
    return static_cast<T>(*value);
  }

  std::optional<double> Double(const Entry& entry, const std::string& path) {
    if (!Begin(entry, path)) return std::nullopt;
    const YAML::Node& node = entry.value;
    const std::string text = node.IsScalar() ? node.Scalar() : "";
    if (!IsPlain(node) || !IsNumberText(text)) {
      Fail(path, ValueMark(entry),
           absl::StrCat("expected a number, got ", Describe(node),
                        IsNumberText(text) ? QuotedHint(node, "numbers") : ""));
      return std::nullopt;
    }
    double value = 0;
    if (!ParseDouble(text, &value)) {
      Fail(path, ValueMark(entry),
           absl::StrCat("out of range for a 64-bit float, got ", text));
      return std::nullopt;
    }
    return value;
  }

  std::optional<bool> Bool(const Entry& entry, const std::string& path) {
    if (!Begin(entry, path)) return std::nullopt;
    const YAML::Node& node = entry.value;
    const std::string text = node.IsScalar() ? node.Scalar() : "";
    std::optional<bool> value = BoolFromText(text);
    if (!IsPlain(node) || !value) {
      Fail(path, ValueMark(entry),
           absl::StrCat("expected true or false, got ", Describe(node),
                        value ? QuotedHint(node, "true and false") : ""));
      return std::nullopt;
    }
    return value;
  }

  std::optional<int> Enum(const Entry& entry, const std::string& path,
                          const EnumDescriptor& type) {
    if (!Begin(entry, path)) return std::nullopt;
    const YAML::Node& node = entry.value;
    if (node.IsScalar()) {
      if (auto number = EnumNumber(type, node.Scalar())) return number;
    }
    const std::vector<absl::string_view> names = SpellingsOf(type);
    Fail(path, ValueMark(entry),
         absl::StrCat("must be one of ", absl::StrJoin(names, ", "), "; got ",
                      Describe(node),
                      node.IsScalar() ? DidYouMean(node.Scalar(), names) : ""));
    return std::nullopt;
  }

  absl::flat_hash_map<std::string, YAML::Mark> marks_;
  std::vector<std::string> failed_;
};

// ---------------------------------------------------------------------------
// Writing YAML.

// Appends map `field` of `message` (string keys) as a block mapping at
// `depth`, sorted by key; " {}" when it is empty.
void WriteMap(const Message& message, const FieldDescriptor& field, int depth,
              std::string* out) {
  const Reflection& r = *message.GetReflection();
  const Descriptor& pair = *field.message_type();
  std::map<std::string, std::string> items;
  for (int i = 0; i < r.FieldSize(message, &field); ++i) {
    const Message& item = r.GetRepeatedMessage(message, &field, i);
    items.emplace(item.GetReflection()->GetString(item, pair.map_key()),
                  ScalarText(item, *pair.map_value()));
  }
  if (items.empty()) {
    absl::StrAppend(out, " {}\n");
    return;
  }
  absl::StrAppend(out, "\n");
  for (const auto& [key, value] : items) {
    absl::StrAppend(out, std::string(2 * depth, ' '), YamlString(key), ": ",
                    value, "\n");
  }
}

// Appends `message` as a block mapping at `depth` (two spaces a level):
// every field, set or not, in declaration order; lists in flow style.
void WriteMessage(const Message& message, int depth, std::string* out) {
  const Reflection& r = *message.GetReflection();
  const Descriptor& type = *message.GetDescriptor();
  for (int i = 0; i < type.field_count(); ++i) {
    const FieldDescriptor& field = *type.field(i);
    absl::StrAppend(out, std::string(2 * depth, ' '), YamlKey(field), ":");
    if (field.is_map()) {
      WriteMap(message, field, depth + 1, out);
    } else if (field.is_repeated()) {
      absl::StrAppend(out, " ", FlowList(message, field), "\n");
    } else if (field.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      absl::StrAppend(out, "\n");
      WriteMessage(r.GetMessage(message, &field), depth + 1, out);
    } else {
      absl::StrAppend(out, " ", ScalarText(message, field), "\n");
    }
  }
}

}  // namespace

absl::string_view YamlName(PredictionType value) {
  return SpellingOf(*lpd::v1::PredictionType_descriptor(), value);
}
absl::string_view YamlName(Criterion value) {
  return SpellingOf(*lpd::v1::Criterion_descriptor(), value);
}
absl::string_view YamlName(PruneUnit value) {
  return SpellingOf(*lpd::v1::PruneUnit_descriptor(), value);
}
absl::string_view YamlName(Precision value) {
  return SpellingOf(*lpd::v1::Precision_descriptor(), value);
}
absl::string_view YamlName(Device value) {
  return SpellingOf(*lpd::v1::Device_descriptor(), value);
}

void ApplyDefaults(CompressionJob* job) {
  const JobSpecDefaults& d = kJobSpecDefaults;
  JobSpec* spec = job->mutable_spec();
  job->mutable_metadata();
  spec->mutable_model();
  spec->mutable_output();

  DataSpec* data = spec->mutable_data();
  data->mutable_train();
  if (!data->has_calibration_samples()) {
    data->set_calibration_samples(d.calibration_samples);
  }
  if (!data->has_eval_samples()) data->set_eval_samples(d.eval_samples);

  PruneSpec* prune = spec->mutable_prune();
  if (!prune->has_target_ratio()) prune->set_target_ratio(d.target_ratio);
  if (prune->criterion() == lpd::v1::CRITERION_UNSPECIFIED) {
    prune->set_criterion(d.criterion);
  }
  if (prune->units_size() == 0) {
    for (PruneUnit unit : d.units) prune->add_units(unit);
  }
  if (!prune->has_additivity_sets()) {
    prune->set_additivity_sets(d.additivity_sets);
  }

  DistillSpec* distill = spec->mutable_distill();
  if (!distill->has_steps()) distill->set_steps(d.steps);
  if (!distill->has_batch_size()) distill->set_batch_size(d.batch_size);
  if (!distill->has_learning_rate()) {
    distill->set_learning_rate(d.learning_rate);
  }
  if (!distill->has_weight_decay()) distill->set_weight_decay(d.weight_decay);
  if (!distill->has_grad_clip_norm()) {
    distill->set_grad_clip_norm(d.grad_clip_norm);
  }
  if (!distill->has_warmup_steps()) distill->set_warmup_steps(d.warmup_steps);
  if (!distill->has_checkpoint_every()) {
    distill->set_checkpoint_every(d.checkpoint_every);
  }
  if (!distill->has_gpus()) distill->set_gpus(d.gpus);
  DistillLoss* loss = distill->mutable_loss();
  if (!loss->has_task()) loss->set_task(d.loss_task);
  if (!loss->has_output_kd()) loss->set_output_kd(d.loss_output_kd);
  if (!loss->has_feature_kd()) loss->set_feature_kd(d.loss_feature_kd);
  if (!loss->has_normalize_features()) {
    loss->set_normalize_features(d.normalize_features);
  }
}

absl::Status ValidateJobSpec(const CompressionJob& job) {
  CompressionJob filled = job;
  ApplyDefaults(&filled);
  std::vector<Problem> problems;
  CheckJob(filled, &problems);
  return ProblemsToStatus("", problems);
}

absl::StatusOr<CompressionJob> ParseJobSpecYaml(absl::string_view yaml_text,
                                                absl::string_view source) {
  auto error = [&](const YAML::Mark& mark, std::string message) {
    Problem problem{"", std::move(message)};
    SetPosition(mark, &problem);
    return ProblemsToStatus(source, {problem});
  };
  if (yaml_text.size() > kMaxJobSpecBytes) {
    return error(YAML::Mark::null_mark(),
                 absl::StrCat("job spec is ", yaml_text.size(),
                              " bytes; the limit is ", kMaxJobSpecBytes));
  }
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    return error(e.mark, absl::StrCat("invalid YAML: ", e.msg));
  }
  if (documents.empty()) {
    return error(YAML::Mark::null_mark(),
                 "empty document: expected a CompressionJob (apiVersion, "
                 "kind, metadata, spec)");
  }
  if (documents.size() > 1) {
    return error(documents[1].Mark(),
                 "expected one YAML document, found a second");
  }

  CompressionJob job;
  SpecReader reader;
  if (reader.ReadJob(documents[0], &job)) {
    ApplyDefaults(&job);
    std::vector<Problem> checks;
    CheckJob(job, &checks);
    for (Problem& problem : checks) reader.AddCheckProblem(std::move(problem));
  }
  std::vector<Problem>& problems = reader.problems;
  std::stable_sort(
      problems.begin(), problems.end(), [](const Problem& a, const Problem& b) {
        return std::pair(a.line, a.column) < std::pair(b.line, b.column);
      });
  RETURN_IF_ERROR(ProblemsToStatus(source, problems));
  return job;
}

absl::StatusOr<CompressionJob> LoadJobSpecFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("cannot open job spec ", Quote(path)));
  }
  struct stat info;
  if (fstat(fd, &info) == 0 && S_ISDIR(info.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("job spec ", Quote(path), " is a directory"));
  }
  // One byte over the limit tells an oversized file from one at the limit.
  std::string text(kMaxJobSpecBytes + 1, '\0');
  size_t size = 0;
  while (size < text.size()) {
    const ssize_t n = read(fd, text.data() + size, text.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      close(fd);
      return absl::ErrnoToStatus(
          error, absl::StrCat("cannot read job spec ", Quote(path)));
    }
    if (n == 0) break;
    size += static_cast<size_t>(n);
  }
  close(fd);
  if (size > kMaxJobSpecBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": job spec is larger than the limit of ",
                     kMaxJobSpecBytes, " bytes"));
  }
  text.resize(size);
  return ParseJobSpecYaml(text, path);
}

std::string JobSpecToYaml(const CompressionJob& input) {
  CompressionJob job = input;
  ApplyDefaults(&job);
  std::string yaml;
  WriteMessage(job, 0, &yaml);
  return yaml;
}

}  // namespace lpd::job
