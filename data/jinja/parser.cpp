#include "data/jinja/parser.h"

#include <set>

#include "data/jinja/filters.h"
#include "data/jinja/tests.h"

namespace qtrain::jinja {
namespace {

ExprPtr make(Expr::Kind kind, size_t offset) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->offset = offset;
  return e;
}

NodePtr make_node(Node::Kind kind, size_t offset) {
  auto n = std::make_unique<Node>();
  n->kind = kind;
  n->offset = offset;
  return n;
}

std::string describe(const Token& t) {
  switch (t.type) {
    case Tok::kData: return "template data";
    case Tok::kVarBegin: return "begin of print statement";
    case Tok::kVarEnd: return "end of print statement";
    case Tok::kBlockBegin: return "begin of statement block";
    case Tok::kBlockEnd: return "end of statement block";
    case Tok::kEof: return "end of template";
    case Tok::kString: return "string";
    case Tok::kInt: return "integer";
    case Tok::kFloat: return "float";
    default: return "'" + t.text + "'";
  }
}

class Parser {
 public:
  Parser(const LexedTemplate& t, const std::string& where) : t_(t), where_(where) {}

  Body parse_template() {
    Body body = subparse({});
    if (cur().type != Tok::kEof) fail(cur(), "unexpected " + describe(cur()));
    return body;
  }

 private:
  const Token& cur() const { return t_.tokens[i_]; }
  const Token& look(size_t k = 1) const { return t_.tokens[std::min(i_ + k, t_.tokens.size() - 1)]; }
  const Token& next() { return t_.tokens[i_ < t_.tokens.size() - 1 ? i_++ : i_]; }

  [[noreturn]] void fail(const Token& t, const std::string& msg) const { throw TemplateError(where_, t_.pos(t.offset), msg); }

  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::kName && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail(cur(), std::string("expected '") + op + "', got " + describe(cur()));
  }
  const Token& expect_name() {
    if (cur().type != Tok::kName) fail(cur(), "expected a name, got " + describe(cur()));
    return next();
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail(cur(), std::string("expected ") + what + ", got " + describe(cur()));
    next();
  }

  // ---- statements ----

  // Parses nodes until a block whose first name is one of `ends` (left unconsumed, just after its
  // {%), or the end of the template (an error when `ends` is not empty).
  Body subparse(const std::set<std::string>& ends) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (!ends.empty()) {
          std::string list;
          for (const auto& e : ends) list += (list.empty() ? "'" : " or '") + e + "'";
          fail(t, "unexpected end of template: expected " + list);
        }
        return body;
      }
      if (t.type == Tok::kData) {
        auto n = make_node(Node::Kind::kText, t.offset);
        n->text = t.text;
        body.push_back(std::move(n));
        next();
      } else if (t.type == Tok::kVarBegin) {
        next();
        auto n = make_node(Node::Kind::kOutput, t.offset);
        n->expr = parse_tuple(false, true, {}, false);
        expect(Tok::kVarEnd, "'}}'");
        body.push_back(std::move(n));
      } else if (t.type == Tok::kBlockBegin) {
        next();
        if (cur().type == Tok::kName && ends.count(cur().text)) return body;
        body.push_back(parse_statement());
        expect(Tok::kBlockEnd, "'%}'");
      } else {
        fail(t, "unexpected " + describe(t));
      }
    }
  }

  // After the tag's own tokens: its %}, then the body up to one of `ends` (the end name consumed
  // when drop_needle).
  Body parse_statements(const std::set<std::string>& ends, bool drop_needle) {
    skip_op(":");
    expect(Tok::kBlockEnd, "'%}'");
    Body body = subparse(ends);
    if (drop_needle) next();
    return body;
  }

  NodePtr parse_statement() {
    Nest nest(*this);
    const Token& t = cur();
    if (t.type != Tok::kName) fail(t, "tag name expected");
    const std::string& tag = t.text;
    if (tag == "if") return parse_if();
    if (tag == "for") return parse_for();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "call") return parse_call_block();
    if (tag == "filter") return parse_filter_block();
    if (tag == "with") return parse_with();
    if (tag == "generation") {
      next();
      auto n = make_node(Node::Kind::kGeneration, t.offset);
      n->body = parse_statements({"endgeneration"}, true);
      return n;
    }
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) fail(t, "'" + tag + "' outside of a for loop");
      next();
      return make_node(tag == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, t.offset);
    }
    static const std::set<std::string> kKnownUnsupported = {"block", "extends", "include", "import", "from",
                                                            "autoescape", "do", "print", "trans", "pluralize"};
    if (kKnownUnsupported.count(tag)) fail(t, "the '" + tag + "' tag is not supported in chat templates");
    fail(t, "Encountered unknown tag '" + tag + "'.");
  }

  NodePtr parse_if() {
    auto n = make_node(Node::Kind::kIf, next().offset);
    while (true) {
      n->conditions.push_back(parse_tuple(false, false, {}, false));
      n->bodies.push_back(parse_statements({"elif", "else", "endif"}, false));
      const Token& end = next();
      if (end.text == "elif") continue;
      if (end.text == "else") n->else_body = parse_statements({"endif"}, true);
      return n;
    }
  }

  std::vector<std::string> parse_assign_names(const std::set<std::string>& extra_end) {
    std::vector<std::string> names;
    const bool paren = skip_op("(");
    while (true) {
      if (!names.empty()) {
        if (!skip_op(",")) break;
        if (cur().type != Tok::kName || extra_end.count(cur().text)) break;  // trailing comma
      }
      const Token& t = expect_name();
      if (t.text == "true" || t.text == "false" || t.text == "none" || t.text == "True" || t.text == "False" || t.text == "None")
        fail(t, "can't assign to '" + t.text + "'");
      names.push_back(t.text);
    }
    if (paren) expect_op(")");
    return names;
  }

  NodePtr parse_for() {
    auto n = make_node(Node::Kind::kFor, next().offset);
    n->targets = parse_assign_names({"in"});
    if (!skip_name("in")) fail(cur(), "expected 'in', got " + describe(cur()));
    n->expr = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) n->cond = parse_expression(true);
    if (is_name("recursive")) fail(cur(), "recursive for loops are not supported");
    ++loop_depth_;
    n->body = parse_statements({"endfor", "else"}, false);
    --loop_depth_;
    if (next().text == "else") n->else_body = parse_statements({"endfor"}, true);
    return n;
  }

  NodePtr parse_set() {
    const size_t offset = next().offset;
    if (cur().type == Tok::kName && look().type == Tok::kOp && look().text == ".") {
      auto n = make_node(Node::Kind::kSet, offset);
      n->targets = {next().text};
      next();
      n->text = expect_name().text;
      n->attr_target = true;
      expect_op("=");
      n->expr = parse_tuple(false, true, {}, false);
      return n;
    }
    auto names = parse_assign_names({});
    if (skip_op("=")) {
      auto n = make_node(Node::Kind::kSet, offset);
      n->targets = std::move(names);
      n->expr = parse_tuple(false, true, {}, false);
      return n;
    }
    if (names.size() != 1) fail(cur(), "a block set assigns one name");
    auto n = make_node(Node::Kind::kSetBlock, offset);
    n->targets = std::move(names);
    if (is_op("|")) n->expr = parse_filter(nullptr, false);
    n->body = parse_statements({"endset"}, true);
    return n;
  }

  std::vector<MacroParam> parse_params() {
    std::vector<MacroParam> params;
    expect_op("(");
    while (!is_op(")")) {
      if (!params.empty()) expect_op(",");
      if (is_op(")")) break;
      MacroParam p;
      p.name = expect_name().text;
      if (skip_op("=")) p.default_value = parse_expression(true);
      else if (!params.empty() && params.back().default_value) fail(cur(), "non-default argument follows default argument");
      params.push_back(std::move(p));
    }
    expect_op(")");
    return params;
  }

  NodePtr parse_macro() {
    auto n = make_node(Node::Kind::kMacro, next().offset);
    n->text = expect_name().text;
    n->params = parse_params();
    const int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = parse_statements({"endmacro"}, true);
    loop_depth_ = saved;
    return n;
  }

  NodePtr parse_call_block() {
    auto n = make_node(Node::Kind::kCallBlock, next().offset);
    if (is_op("(")) n->params = parse_params();
    n->expr = parse_expression(true);
    if (n->expr->kind != Expr::Kind::kCall) fail(cur(), "expected a call after {% call %}");
    const int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = parse_statements({"endcall"}, true);
    loop_depth_ = saved;
    return n;
  }

  NodePtr parse_filter_block() {
    auto n = make_node(Node::Kind::kFilterBlock, next().offset);
    n->expr = parse_filter(nullptr, true);
    n->body = parse_statements({"endfilter"}, true);
    return n;
  }

  NodePtr parse_with() {
    auto n = make_node(Node::Kind::kWith, next().offset);
    while (cur().type != Tok::kBlockEnd) {
      if (!n->assignments.empty()) expect_op(",");
      std::string name = expect_name().text;
      expect_op("=");
      n->assignments.emplace_back(std::move(name), parse_expression(true));
    }
    n->body = parse_statements({"endwith"}, true);
    return n;
  }

  // ---- expressions ----

  bool is_tuple_end(const std::set<std::string>& extra_end) const {
    const Token& t = cur();
    if (t.type == Tok::kVarEnd || t.type == Tok::kBlockEnd || (t.type == Tok::kOp && t.text == ")")) return true;
    return t.type == Tok::kName && extra_end.count(t.text);
  }

  ExprPtr parse_tuple(bool simplified, bool with_condexpr, const std::set<std::string>& extra_end, bool explicit_parens) {
    const size_t offset = cur().offset;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      args.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parens) fail(cur(), "Expected an expression, got " + describe(cur()));
    }
    auto e = make(Expr::Kind::kTuple, offset);
    e->items = std::move(args);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    Nest nest(*this);
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const size_t offset = next().offset;
      auto c = make(Expr::Kind::kCondition, offset);
      c->a = parse_or();
      c->b = std::move(e);
      if (skip_name("else")) c->c = parse_condexpr();
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(const std::string& op, ExprPtr l, ExprPtr r, size_t offset) {
    auto e = make(Expr::Kind::kBinary, offset);
    e->name = op;
    e->a = std::move(l);
    e->b = std::move(r);
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const size_t offset = next().offset;
      e = binary("or", std::move(e), parse_and(), offset);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const size_t offset = next().offset;
      e = binary("and", std::move(e), parse_not(), offset);
    }
    return e;
  }

  ExprPtr parse_not() {
    Nest nest(*this);
    if (is_name("not")) {
      auto e = make(Expr::Kind::kUnary, next().offset);
      e->name = "not";
      e->a = parse_not();
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const size_t offset = cur().offset;
    ExprPtr first = parse_math1();
    std::vector<std::string> ops;
    std::vector<ExprPtr> operands;
    while (true) {
      if (cur().type == Tok::kOp && (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
                                     cur().text == ">" || cur().text == ">=")) {
        ops.push_back(next().text);
      } else if (is_name("in")) {
        next();
        ops.push_back("in");
      } else if (is_name("not") && look().type == Tok::kName && look().text == "in") {
        next();
        next();
        ops.push_back("not in");
      } else {
        break;
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return first;
    auto e = make(Expr::Kind::kCompare, offset);
    e->a = std::move(first);
    e->ops = std::move(ops);
    e->items = std::move(operands);
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      e = binary(t.text, std::move(e), parse_concat(), t.offset);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const size_t offset = next().offset;
      e = binary("~", std::move(e), parse_math2(), offset);
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      e = binary(t.text, std::move(e), parse_pow(), t.offset);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const size_t offset = next().offset;
      e = binary("**", std::move(e), parse_unary(true), offset);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    Nest nest(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      e = make(Expr::Kind::kUnary, t.offset);
      e->name = t.text;
      e->a = parse_unary(false);
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    if (t.type == Tok::kName) {
      next();
      if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
        auto e = make(Expr::Kind::kLiteral, t.offset);
        e->value = Value(t.text == "true" || t.text == "True");
        return e;
      }
      if (t.text == "none" || t.text == "None") {
        auto e = make(Expr::Kind::kLiteral, t.offset);
        e->value = Value(None{});
        return e;
      }
      auto e = make(Expr::Kind::kName, t.offset);
      e->name = t.text;
      return e;
    }
    if (t.type == Tok::kString) {
      std::string s;
      while (cur().type == Tok::kString) s += next().text;
      auto e = make(Expr::Kind::kLiteral, t.offset);
      e->value = Value(std::move(s));
      return e;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      next();
      auto e = make(Expr::Kind::kLiteral, t.offset);
      e->value = t.type == Tok::kInt ? Value(t.int_value) : Value(t.float_value);
      return e;
    }
    if (is_op("(")) {
      next();
      ExprPtr e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      auto e = make(Expr::Kind::kList, next().offset);
      while (!is_op("]")) {
        if (!e->items.empty()) expect_op(",");
        if (is_op("]")) break;
        e->items.push_back(parse_expression(true));
      }
      expect_op("]");
      return e;
    }
    if (is_op("{")) {
      auto e = make(Expr::Kind::kDict, next().offset);
      while (!is_op("}")) {
        if (!e->items.empty()) expect_op(",");
        if (is_op("}")) break;
        e->items.push_back(parse_expression(true));
        expect_op(":");
        e->items.push_back(parse_expression(true));
      }
      expect_op("}");
      return e;
    }
    fail(t, "unexpected " + describe(t));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        const size_t offset = next().offset;
        const Token& attr = cur();
        if (attr.type == Tok::kName) {
          next();
          auto g = make(Expr::Kind::kGetAttr, offset);
          g->a = std::move(e);
          g->name = attr.text;
          e = std::move(g);
        } else if (attr.type == Tok::kInt) {
          next();
          auto g = make(Expr::Kind::kGetItem, offset);
          g->a = std::move(e);
          g->b = make(Expr::Kind::kLiteral, attr.offset);
          g->b->value = Value(attr.int_value);
          e = std::move(g);
        } else {
          fail(attr, "expected name or number");
        }
      } else if (is_op("[")) {
        const size_t offset = next().offset;
        std::vector<ExprPtr> args;
        while (!is_op("]")) {
          if (!args.empty()) expect_op(",");
          args.push_back(parse_subscribed());
        }
        expect_op("]");
        if (args.size() == 1 && args[0]->kind == Expr::Kind::kSlice) {
          args[0]->a = std::move(e);
          e = std::move(args[0]);
          continue;
        }
        auto g = make(Expr::Kind::kGetItem, offset);
        g->a = std::move(e);
        if (args.size() == 1) {
          g->b = std::move(args[0]);
        } else {
          g->b = make(Expr::Kind::kTuple, offset);
          for (auto& a : args)
            if (a->kind == Expr::Kind::kSlice) fail(t_.tokens[i_ - 1], "multi-dimensional slices are not supported");
          g->b->items = std::move(args);
        }
        e = std::move(g);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  // One subscript: an expression or a slice lo:hi:step (the slice's operand `a` is filled by the caller;
  // its parts are b, c and items[0]).
  ExprPtr parse_subscribed() {
    const size_t offset = cur().offset;
    ExprPtr lo, hi, step;
    if (!is_op(":")) {
      lo = parse_expression(true);
      if (!is_op(":")) return lo;
    }
    next();  // ':'
    if (!is_op(":") && !is_op("]") && !is_op(",")) hi = parse_expression(true);
    if (skip_op(":"))
      if (!is_op("]") && !is_op(",")) step = parse_expression(true);
    auto s = make(Expr::Kind::kSlice, offset);
    s->b = std::move(lo);
    s->c = std::move(hi);
    s->items.push_back(std::move(step));
    return s;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    bool any = false;
    while (!is_op(")")) {
      if (any) expect_op(",");
      if (is_op(")")) break;
      any = true;
      if (is_op("*") || is_op("**")) fail(cur(), "*args / **kwargs in calls are not supported");
      if (cur().type == Tok::kName && look().type == Tok::kOp && look().text == "=") {
        std::string name = next().text;
        next();
        e.kwargs.push_back(Kwarg{std::move(name), parse_expression(true)});
      } else {
        if (!e.kwargs.empty()) fail(cur(), "positional argument follows keyword argument");
        e.items.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = make(Expr::Kind::kCall, cur().offset);
    e->a = std::move(callee);
    parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter(ExprPtr operand, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      const Token& t = expect_name();
      std::string name = t.text;
      while (is_op(".")) {
        next();
        name += "." + expect_name().text;
      }
      if (!has_filter(name)) fail(t, "No filter named '" + name + "'.");
      auto f = make(Expr::Kind::kFilter, t.offset);
      f->a = std::move(operand);
      f->name = name;
      if (is_op("(")) parse_call_args(*f);
      operand = std::move(f);
    }
    return operand;
  }

  ExprPtr parse_test(ExprPtr operand) {
    const size_t offset = next().offset;  // 'is'
    const bool negated = skip_name("not");
    const Token& t = expect_name();
    std::string name = t.text;
    while (is_op(".")) {
      next();
      name += "." + expect_name().text;
    }
    if (!has_test(name)) fail(t, "No test named '" + name + "'.");
    auto e = make(Expr::Kind::kTest, offset);
    e->a = std::move(operand);
    e->name = name;
    e->negated = negated;
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::kName || cur().type == Tok::kString || cur().type == Tok::kInt || cur().type == Tok::kFloat ||
                is_op("(") || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail(cur(), "You cannot chain multiple tests with is");
      e->items.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) e = parse_filter(std::move(e), false);
      else if (is_name("is")) e = parse_test(std::move(e));
      else if (is_op("(")) e = parse_call(std::move(e));
      else return e;
    }
  }

  // Nesting of expressions and blocks, bounded so that a pathological template is an error rather
  // than a stack overflow (jinja2 stops at Python's recursion limit likewise).
  class Nest {
   public:
    explicit Nest(Parser& p) : p_(p) {
      if (++p_.nesting_ > kMaxNesting) p_.fail(p_.cur(), "the template nests too deeply (more than " + std::to_string(kMaxNesting) + " levels)");
    }
    ~Nest() { --p_.nesting_; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;

   private:
    Parser& p_;
  };
  static constexpr int kMaxNesting = 150;

  const LexedTemplate& t_;
  const std::string& where_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  int nesting_ = 0;
};

}  // namespace

Body parse(const LexedTemplate& lexed, const std::string& where) { return Parser(lexed, where).parse_template(); }

}  // namespace qtrain::jinja
