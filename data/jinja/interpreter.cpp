#include "data/jinja/interpreter.h"

#include "data/jinja/error.h"
#include "data/jinja/filters.h"
#include "data/jinja/operators.h"
#include "data/jinja/tests.h"

namespace qtrain::jinja {
namespace {

constexpr int kMaxCallDepth = 200;

// Restores a member on scope exit (frames and output buffers are swapped for scopes and captures).
template <typename T>
class Restore {
 public:
  Restore(T& slot, T value) : slot_(slot), saved_(std::move(slot)) { slot_ = std::move(value); }
  ~Restore() { slot_ = std::move(saved_); }
  Restore(const Restore&) = delete;
  Restore& operator=(const Restore&) = delete;

 private:
  T& slot_;
  T saved_;
};

}  // namespace

void Interpreter::fail(size_t offset, const std::string& msg) const { throw TemplateError(where_, lexed_.pos(offset), msg); }

std::string Interpreter::render(const Body& body, const DictPtr& globals, Spans* generation_spans) {
  auto root = std::make_shared<Frame>();
  for (const auto& [k, v] : globals->items) root->vars[k] = v;
  frame_ = std::make_shared<Frame>();
  frame_->parent = root;
  std::string out;
  out_ = &out;
  root_out_ = &out;
  spans_ = generation_spans;
  struct Cleanup {
    Interpreter& in;
    ~Cleanup() {
      // Namespaces can hold themselves (set ns.self = ns): empty them so the cycle is freed.
      for (const auto& w : in.namespaces_)
        if (auto d = w.lock()) d->items.clear();
      in.namespaces_.clear();
      in.frame_.reset();
      in.out_ = in.root_out_ = nullptr;
    }
  } cleanup{*this};
  exec_body(body);
  return out;
}

Value Interpreter::lookup(const std::string& name) const {
  for (const Frame* f = frame_.get(); f; f = f->parent.get()) {
    auto it = f->vars.find(name);
    if (it != f->vars.end()) return it->second;
  }
  return Value(Undefined{"'" + name + "' is undefined"});
}

void Interpreter::assign(const std::string& name, Value v) { frame_->vars[name] = std::move(v); }

void Interpreter::assign_targets(const std::vector<std::string>& targets, const Value& v) {
  if (targets.size() == 1) {
    assign(targets[0], v);
    return;
  }
  const auto items = iterate(v);
  if (items.size() < targets.size())
    throw EvalError("not enough values to unpack (expected " + std::to_string(targets.size()) + ", got " + std::to_string(items.size()) + ")");
  if (items.size() > targets.size()) throw EvalError("too many values to unpack (expected " + std::to_string(targets.size()) + ")");
  for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
}

Value Interpreter::eval(const Expr& e) {
  try {
    return eval_inner(e);
  } catch (const EvalError& err) {
    fail(e.offset, err.what());
  }
}

CallArgs Interpreter::eval_args(const Expr& e) {
  CallArgs args;
  for (const auto& a : e.items) args.positional.push_back(eval(*a));
  for (const auto& k : e.kwargs) args.keyword.emplace_back(k.name, eval(*k.value));
  return args;
}

Value Interpreter::eval_call(const Expr& e) {
  const Value callee = eval(*e.a);
  CallArgs args = eval_args(e);
  if (callee.is_undefined()) fail_undefined(callee);
  if (!callee.is_callable()) throw EvalError("'" + type_name(callee) + "' object is not callable");
  if (++depth_ > kMaxCallDepth) {
    depth_ = 0;
    throw EvalError("maximum call depth exceeded (recursive macro?)");
  }
  try {
    Value r = callee.as_callable().fn(*this, args);
    --depth_;
    return r;
  } catch (const RaiseRequest& r) {
    --depth_;
    throw TemplateRaised(where_, lexed_.pos(e.offset), r.message);
  } catch (...) {
    --depth_;
    throw;
  }
}

Value Interpreter::eval_inner(const Expr& e) {
  switch (e.kind) {
    case Expr::Kind::kLiteral: return e.value;
    case Expr::Kind::kName: return lookup(e.name);
    case Expr::Kind::kList:
    case Expr::Kind::kTuple: {
      std::vector<Value> items;
      for (const auto& x : e.items) items.push_back(eval(*x));
      return Value::list(std::move(items), e.kind == Expr::Kind::kTuple);
    }
    case Expr::Kind::kDict: {
      auto d = std::make_shared<Dict>();
      for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
        Value k = eval(*e.items[i]);
        if (!k.is_string()) throw EvalError("dict keys other than strings are not supported (got " + type_name(k) + ")");
        d->set(k.as_string(), eval(*e.items[i + 1]));
      }
      return Value(std::move(d));
    }
    case Expr::Kind::kGetAttr: return get_attr(eval(*e.a), e.name);
    case Expr::Kind::kGetItem: {
      const Value obj = eval(*e.a);
      return get_item(obj, eval(*e.b));
    }
    case Expr::Kind::kSlice: {
      const Value obj = eval(*e.a);
      const Value lo = e.b ? eval(*e.b) : Value(None{});
      const Value hi = e.c ? eval(*e.c) : Value(None{});
      const Value st = e.items[0] ? eval(*e.items[0]) : Value(None{});
      return slice(obj, lo, hi, st);
    }
    case Expr::Kind::kCall: return eval_call(e);
    case Expr::Kind::kFilter: {
      const Value v = eval(*e.a);
      CallArgs args = eval_args(e);
      return apply_filter(e.name, v, args);
    }
    case Expr::Kind::kTest: {
      const Value v = eval(*e.a);
      CallArgs args = eval_args(e);
      return Value(apply_test(e.name, v, args) != e.negated);
    }
    case Expr::Kind::kUnary: {
      const Value v = eval(*e.a);
      if (e.name == "not") return Value(!truthy(v));
      return e.name == "-" ? negate(v) : positive(v);
    }
    case Expr::Kind::kBinary: {
      const Value a = eval(*e.a);
      if (e.name == "and") return truthy(a) ? eval(*e.b) : a;
      if (e.name == "or") return truthy(a) ? a : eval(*e.b);
      return binary_op(e.name, a, eval(*e.b));
    }
    case Expr::Kind::kCompare: {
      Value left = eval(*e.a);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = eval(*e.items[i]);
        if (!compare_op(e.ops[i], left, right)) return Value(false);
        left = std::move(right);
      }
      return Value(true);
    }
    case Expr::Kind::kCondition:
      if (truthy(eval(*e.a))) return eval(*e.b);
      return e.c ? eval(*e.c) : Value(Undefined{"the inline if-expression on line " + std::to_string(lexed_.pos(e.offset).line) + " evaluated to false and no else section was defined."});
  }
  throw EvalError("unknown expression");
}

Interpreter::Flow Interpreter::exec_body(const Body& body) {
  for (const auto& n : body) {
    const Flow f = exec(*n);
    if (f != Flow::kNormal) return f;
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::exec(const Node& n) {
  if (max_steps_ && ++steps_ > max_steps_) fail(n.offset, "the template ran more than " + std::to_string(max_steps_) + " steps");
  try {
    return exec_inner(n);
  } catch (const EvalError& err) {
    fail(n.offset, err.what());
  }
}

std::string Interpreter::capture(const Body& body) {
  std::string buf;
  Restore<std::string*> r(out_, &buf);
  exec_body(body);
  return buf;
}

// A filter chain parsed on a missing operand ({% filter a|b %}, {% set x | a %}): applied to `input`.
Value Interpreter::apply_filter_chain(const Expr* chain, Value input) {
  if (!chain) return input;
  input = apply_filter_chain(chain->a.get(), std::move(input));
  CallArgs args = eval_args(*chain);
  try {
    return apply_filter(chain->name, input, args);
  } catch (const EvalError& err) {
    fail(chain->offset, err.what());
  }
}

Interpreter::Flow Interpreter::exec_for(const Node& n) {
  const Value iterable = eval(*n.expr);
  std::vector<Value> items = iterate(iterable);
  if (n.cond) {
    std::vector<Value> kept;
    for (const auto& x : items) {
      auto scope = std::make_shared<Frame>();
      scope->parent = frame_;
      Restore<FramePtr> r(frame_, scope);
      assign_targets(n.targets, x);
      if (truthy(eval(*n.cond))) kept.push_back(x);
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    exec_body(n.else_body);
    return Flow::kNormal;
  }
  const int64_t len = static_cast<int64_t>(items.size());
  auto last_changed = std::make_shared<std::optional<std::vector<Value>>>();
  for (int64_t i = 0; i < len; ++i) {
    auto scope = std::make_shared<Frame>();
    scope->parent = frame_;
    Restore<FramePtr> r(frame_, scope);
    auto loop = std::make_shared<Dict>();
    loop->set("index0", Value(i));
    loop->set("index", Value(i + 1));
    loop->set("revindex", Value(len - i));
    loop->set("revindex0", Value(len - i - 1));
    loop->set("first", Value(i == 0));
    loop->set("last", Value(i == len - 1));
    loop->set("length", Value(len));
    loop->set("depth", Value(int64_t{1}));
    loop->set("depth0", Value(int64_t{0}));
    loop->set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value(Undefined{"there is no previous item"}));
    loop->set("nextitem", i + 1 < len ? items[static_cast<size_t>(i + 1)] : Value(Undefined{"there is no next item"}));
    loop->set("cycle", Value::function("loop.cycle", [i](Interpreter&, CallArgs& a) {
      if (a.positional.empty()) throw EvalError("no items for cycling given");
      return a.positional[static_cast<size_t>(i) % a.positional.size()];
    }));
    loop->set("changed", Value::function("loop.changed", [last_changed](Interpreter&, CallArgs& a) {
      const Value now = Value::list(a.positional);
      if (*last_changed && equals(Value::list(**last_changed), now)) return Value(false);
      *last_changed = a.positional;
      return Value(true);
    }));
    assign("loop", Value(std::move(loop)));
    assign_targets(n.targets, items[static_cast<size_t>(i)]);
    if (exec_body(n.body) == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

Value Interpreter::call_macro(const Node& macro, const FramePtr& defined_in, CallArgs& args, const Value& caller, const Body& body) {
  auto scope = std::make_shared<Frame>();
  scope->parent = defined_in;
  Restore<FramePtr> r(frame_, scope);
  if (args.positional.size() > macro.params.size())
    throw EvalError("macro '" + macro.text + "' takes not more than " + std::to_string(macro.params.size()) + " argument(s)");
  std::vector<bool> bound(macro.params.size(), false);
  for (size_t i = 0; i < args.positional.size(); ++i) assign(macro.params[i].name, args.positional[i]), bound[i] = true;
  for (auto& [name, v] : args.keyword) {
    size_t k = 0;
    while (k < macro.params.size() && macro.params[k].name != name) ++k;
    if (k == macro.params.size()) throw EvalError("macro '" + macro.text + "' takes no keyword argument '" + name + "'");
    if (bound[k]) throw EvalError("macro '" + macro.text + "' got multiple values for argument '" + name + "'");
    assign(name, v);
    bound[k] = true;
  }
  for (size_t i = 0; i < macro.params.size(); ++i) {
    if (bound[i]) continue;
    // jinja2 leaves a missing argument without default undefined.
    assign(macro.params[i].name, macro.params[i].default_value ? eval(*macro.params[i].default_value)
                                                               : Value(Undefined{"parameter '" + macro.params[i].name + "' was not provided"}));
  }
  if (!caller.is_undefined()) assign("caller", caller);
  return Value(capture(body));
}

Interpreter::Flow Interpreter::exec_inner(const Node& n) {
  switch (n.kind) {
    case Node::Kind::kText: *out_ += n.text; return Flow::kNormal;
    case Node::Kind::kOutput: *out_ += to_str(eval(*n.expr)); return Flow::kNormal;
    case Node::Kind::kIf:
      for (size_t i = 0; i < n.conditions.size(); ++i)
        if (truthy(eval(*n.conditions[i]))) return exec_body(n.bodies[i]);
      return exec_body(n.else_body);
    case Node::Kind::kFor: return exec_for(n);
    case Node::Kind::kSet: {
      Value v = eval(*n.expr);
      if (n.attr_target) {
        const Value ns = lookup(n.targets[0]);
        if (!ns.is_dict() || !ns.as_dict()->is_namespace) throw EvalError("cannot assign attribute on non-namespace object");
        if (!n.text.empty() && n.text[0] == '_')
          throw EvalError("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + n.text + "'");
        ns.as_dict()->set(n.text, std::move(v));
      } else {
        assign_targets(n.targets, v);
      }
      return Flow::kNormal;
    }
    case Node::Kind::kSetBlock: assign(n.targets[0], apply_filter_chain(n.expr.get(), Value(capture(n.body)))); return Flow::kNormal;
    case Node::Kind::kMacro: {
      const Node* node = &n;
      // Weak: the macro is stored in the scope it closes over (a strong pointer would be a cycle).
      std::weak_ptr<Frame> defined_in = frame_;
      // The macro's own name is visible inside it (recursion) through the scope it is stored in.
      assign(n.text, Value::function("macro '" + n.text + "'", [node, defined_in](Interpreter& in, CallArgs& a) {
        Value caller = std::exchange(in.pending_caller, Value());
        FramePtr scope = defined_in.lock();
        if (!scope) throw EvalError("macro '" + node->text + "' called after the scope it was defined in ended");
        return in.call_macro(*node, scope, a, caller, node->body);
      }));
      return Flow::kNormal;
    }
    case Node::Kind::kCallBlock: {
      const Node* node = &n;
      std::weak_ptr<Frame> defined_in = frame_;
      Value caller = Value::function("caller", [node, defined_in](Interpreter& in, CallArgs& a) {
        FramePtr scope = defined_in.lock();
        if (!scope) throw EvalError("caller() called after its {% call %} block ended");
        return in.call_macro(*node, scope, a, Value(), node->body);
      });
      const Expr& call = *n.expr;
      const Value callee = eval(*call.a);
      CallArgs args = eval_args(call);
      if (!callee.is_callable()) throw EvalError("{% call %} needs a macro");
      pending_caller = caller;
      Value r = callee.as_callable().fn(*this, args);
      pending_caller = Value();
      *out_ += to_str(r);
      return Flow::kNormal;
    }
    case Node::Kind::kFilterBlock: *out_ += to_str(apply_filter_chain(n.expr.get(), Value(capture(n.body)))); return Flow::kNormal;
    case Node::Kind::kWith: {
      auto scope = std::make_shared<Frame>();
      scope->parent = frame_;
      for (const auto& [name, e] : n.assignments) scope->vars[name] = eval(*e);
      Restore<FramePtr> r(frame_, scope);
      return exec_body(n.body);
    }
    case Node::Kind::kBreak: return Flow::kBreak;
    case Node::Kind::kContinue: return Flow::kContinue;
    case Node::Kind::kGeneration: {
      const size_t begin = out_->size();
      const Flow f = exec_body(n.body);
      if (spans_ && out_ == root_out_) spans_->emplace_back(begin, out_->size());
      return f;
    }
  }
  return Flow::kNormal;
}

}  // namespace qtrain::jinja
