#include "data/jinja/json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "data/jinja/error.h"
#include "data/jinja/py_string.h"
#include "data/tokenizer/utf8.h"

namespace qtrain::jinja {
namespace {

void append_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  char buf[16];
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
          if (c < 0x20) {
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    const size_t n = utf8::sequence_length(s, i);
    if (n == 0) throw EvalError("tojson: text is not valid UTF-8");
    if (!ensure_ascii) {
      out.append(s, i, n);
    } else {
      char32_t cp = utf8::decode(s, i, n);
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (cp >> 10)),
                      static_cast<unsigned>(0xDC00 + (cp & 0x3FF)));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
      }
      out += buf;
    }
    i += n;
  }
  out += '"';
}

struct Dumper {
  const DumpOptions& o;
  std::string item_sep, key_sep, indent_unit;
  bool indented;

  explicit Dumper(const DumpOptions& opt) : o(opt) {
    indented = o.indent_text.has_value() || o.indent.has_value();
    if (o.indent_text) indent_unit = *o.indent_text;
    else if (o.indent) indent_unit = std::string(static_cast<size_t>(std::max<int64_t>(0, *o.indent)), ' ');
    item_sep = indented ? "," : ", ";
    key_sep = ": ";
    if (o.separators) item_sep = o.separators->first, key_sep = o.separators->second;
  }

  void newline(std::string& out, int depth) const {
    if (!indented) return;
    out += '\n';
    for (int i = 0; i < depth; ++i) out += indent_unit;
  }

  void dump(std::string& out, const Value& v, int depth) const {
    if (v.is_none()) out += "null";
    else if (v.is_bool()) out += v.as_bool() ? "true" : "false";
    else if (v.is_int()) out += std::to_string(v.as_int());
    else if (v.is_float()) {
      const double d = v.as_float();
      out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : float_repr(d);
    } else if (v.is_string()) append_string(out, v.as_string(), o.ensure_ascii);
    else if (v.is_list()) {
      const auto& items = v.as_list()->items;
      if (items.empty()) { out += "[]"; return; }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += item_sep;
        newline(out, depth + 1);
        dump(out, items[i], depth + 1);
      }
      newline(out, depth);
      out += ']';
    } else if (v.is_dict() && !v.as_dict()->is_namespace) {
      auto items = v.as_dict()->items;
      if (items.empty()) { out += "{}"; return; }
      if (o.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      out += '{';
      bool first = true;
      for (const auto& [k, val] : items) {
        if (!first) out += item_sep;
        first = false;
        newline(out, depth + 1);
        append_string(out, k, o.ensure_ascii);
        out += key_sep;
        dump(out, val, depth + 1);
      }
      newline(out, depth);
      out += '}';
    } else {
      throw EvalError("Object of type " + type_name(v) + " is not JSON serializable");
    }
  }
};

}  // namespace

std::string json_dumps(const Value& v, const DumpOptions& options) {
  std::string out;
  Dumper(options).dump(out, v, 0);
  return out;
}

Value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value(None{});
    case nlohmann::ordered_json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value(static_cast<double>(u));
      return Value(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      auto d = std::make_shared<Dict>();
      for (auto it = j.begin(); it != j.end(); ++it) d->set(it.key(), from_json(it.value()));
      return Value(std::move(d));
    }
    default: throw EvalError("unsupported JSON value (binary)");
  }
}

}  // namespace qtrain::jinja
