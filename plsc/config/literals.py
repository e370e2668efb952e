"""Typing of text values: PLSC's YAML quirks, `-o` override values and safe arithmetic; never `eval`."""
import ast
import math
import operator

import yaml

from plsc.errors import PlscError

# What PLSC's `ast.literal_eval` of YAML strings may turn into; anything else (a quoted name, bytes,
# complex, sets) stays the original text.
_LITERAL_TYPES = (bool, int, float, type(None), tuple, list)

_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_SIGNS = {ast.UAdd: operator.pos, ast.USub: operator.neg}

# Lower-case YAML/JSON spellings accepted in overrides besides Python's True/False/None.
_NAMED_CONSTANTS = {"true": True, "false": False, "null": None, "none": None}


def literal_or_text(text):
    """The Python literal `text` spells when it is a number, bool, None, tuple or list; else `text`.

    PyYAML follows YAML 1.1, where `5e-4` and `1e-8` are strings and `(0.9, 0.999)` has no syntax;
    PLSC literal-evaluates such strings, so its configs mean numbers and tuples there.
    """
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text
    return value if isinstance(value, _LITERAL_TYPES) else text


def normalise_yaml_quirks(tree):
    """A copy of a YAML tree with every string value and list item passed through `literal_or_text`.

    Keys are left alone. Unlike PLSC this also applies inside lists, so that `input_shape:
    [None, 3, 112, 112]` (YAML reads `None` as the string 'None') holds a real None.
    """
    if isinstance(tree, dict):
        return type(tree)((key, normalise_yaml_quirks(value)) for key, value in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(normalise_yaml_quirks(item) for item in tree)
    if isinstance(tree, str):
        return literal_or_text(tree)
    return tree


def evaluate_number(text):
    """The float value of a number or of arithmetic text such as '1.0/255.0' (+ - * / ** and brackets).

    Only number literals are allowed: no names, calls or attributes, so config text cannot run code.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str):
        raise PlscError(f"expected a number or arithmetic text, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
        value = _arithmetic(tree.body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise PlscError(f"'{text}' is not arithmetic on numbers") from None
    except (ZeroDivisionError, OverflowError) as error:
        raise PlscError(f"'{text}' cannot be evaluated: {error}") from None
    if not math.isfinite(value):
        raise PlscError(f"'{text}' is not a finite number")
    return value


def _arithmetic(node):
    """Evaluate an expression node made only of number literals and arithmetic operators, in floats."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        # Floats, not ints: `9**9**9` then overflows at once instead of building a huge integer.
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _SIGNS:
        return _SIGNS[type(node.op)](_arithmetic(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        return _ARITHMETIC[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    raise ValueError("not arithmetic")


def parse_override_value(text):
    """The typed value of an override's right-hand side; text that is no literal stays a string.

    Python literals (ints, floats like `1e-4`, True/False/None, lists, tuples, dicts) and the spellings
    true/false/null are understood; `{a: 1}` style YAML flow mappings too.
    """
    stripped = text.strip()
    try:
        return _override_literal(ast.parse(stripped, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass
    if stripped[:1] in ("[", "{"):
        try:
            flow = yaml.safe_load(stripped)
        except yaml.YAMLError:
            flow = None
        if isinstance(flow, (list, dict)):
            return normalise_yaml_quirks(flow)
    return stripped


def _override_literal(node):
    """The value of a literal expression node, allowing `true/false/null` names; ValueError otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id.lower() in _NAMED_CONSTANTS:
        return _NAMED_CONSTANTS[node.id.lower()]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _SIGNS:
        operand = _override_literal(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return _SIGNS[type(node.op)](operand)
    if isinstance(node, ast.List):
        return [_override_literal(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_override_literal(item) for item in node.elts)
    if isinstance(node, ast.Dict) and None not in node.keys:
        keys = [_override_literal(key) for key in node.keys]
        if all(isinstance(key, (str, int, float, bool)) for key in keys):
            return dict(zip(keys, (_override_literal(value) for value in node.values)))
    raise ValueError("not a literal")
