package org.shira.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** A minimal, strict JSON reader (RFC 8259) so the core has no dependencies: objects become LinkedHashMap,
 *  arrays ArrayList, numbers Long (integers) or Double, plus String, Boolean and null. Strict as FORMAT.md §1
 *  asks of untrusted headers: at most 16 levels of nesting, integers of at most 20 digits, finite numbers, no
 *  key twice in one object, no lone UTF-16 surrogate in a string. */
public final class Json {
    public static final int MAX_DEPTH = 16;
    public static final int MAX_INT_DIGITS = 20;
    private final String s;
    private int i;
    private int depth;

    private Json(String s) { this.s = s; }

    public static Object parse(String text) {
        Json p = new Json(text);
        p.ws();
        Object v = p.value();
        p.ws();
        if (p.i != p.s.length()) throw p.err("trailing characters");
        return v;
    }

    private IllegalArgumentException err(String what) {
        return new IllegalArgumentException("invalid JSON at offset " + i + ": " + what);
    }

    private void ws() {
        while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) i++;
    }

    private Object value() {
        if (i >= s.length()) throw err("unexpected end");
        char c = s.charAt(i);
        switch (c) {
            case '{': return object();
            case '[': return array();
            case '"': return string();
            case 't': return literal("true", Boolean.TRUE);
            case 'f': return literal("false", Boolean.FALSE);
            case 'n': return literal("null", null);
            default: return number();
        }
    }

    private Object literal(String word, Object v) {
        if (!s.startsWith(word, i)) throw err("expected " + word);
        i += word.length();
        return v;
    }

    private void enter() {
        if (++depth > MAX_DEPTH) throw err("nests deeper than " + MAX_DEPTH + " levels");
    }

    private Map<String, Object> object() {
        enter();
        Map<String, Object> m = new LinkedHashMap<>();
        i++;
        ws();
        if (i < s.length() && s.charAt(i) == '}') { i++; depth--; return m; }
        while (true) {
            ws();
            if (i >= s.length() || s.charAt(i) != '"') throw err("expected a key");
            String k = string();
            ws();
            if (i >= s.length() || s.charAt(i) != ':') throw err("expected ':'");
            i++;
            ws();
            if (m.containsKey(k)) throw err("key " + k + " appears twice in one object");
            m.put(k, value());
            ws();
            if (i >= s.length()) throw err("unexpected end in object");
            char c = s.charAt(i++);
            if (c == '}') { depth--; return m; }
            if (c != ',') throw err("expected ',' or '}'");
        }
    }

    private List<Object> array() {
        enter();
        List<Object> a = new ArrayList<>();
        i++;
        ws();
        if (i < s.length() && s.charAt(i) == ']') { i++; depth--; return a; }
        while (true) {
            ws();
            a.add(value());
            ws();
            if (i >= s.length()) throw err("unexpected end in array");
            char c = s.charAt(i++);
            if (c == ']') { depth--; return a; }
            if (c != ',') throw err("expected ',' or ']'");
        }
    }

    private String string() {
        StringBuilder b = new StringBuilder();
        i++;
        while (true) {
            if (i >= s.length()) throw err("unterminated string");
            char c = s.charAt(i++);
            if (c == '"') return checkSurrogates(b.toString());
            if (c < 0x20) throw err("control character in string");
            if (c != '\\') { b.append(c); continue; }
            if (i >= s.length()) throw err("bad escape");
            char e = s.charAt(i++);
            switch (e) {
                case '"': b.append('"'); break;
                case '\\': b.append('\\'); break;
                case '/': b.append('/'); break;
                case 'b': b.append('\b'); break;
                case 'f': b.append('\f'); break;
                case 'n': b.append('\n'); break;
                case 'r': b.append('\r'); break;
                case 't': b.append('\t'); break;
                case 'u':
                    if (i + 4 > s.length()) throw err("bad \\u escape");
                    b.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                    i += 4;
                    break;
                default: throw err("bad escape \\" + e);
            }
        }
    }

    private String checkSurrogates(String str) {
        for (int k = 0; k < str.length(); k++) {
            char c = str.charAt(k);
            if (Character.isHighSurrogate(c) && k + 1 < str.length() && Character.isLowSurrogate(str.charAt(k + 1))) { k++; continue; }
            if (Character.isSurrogate(c)) throw err("a string that is not valid Unicode (a lone surrogate)");
        }
        return str;
    }

    private Object number() {
        int start = i;
        if (i < s.length() && s.charAt(i) == '-') i++;
        boolean frac = false;
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c >= '0' && c <= '9') { i++; continue; }
            if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') { frac = true; i++; continue; }
            break;
        }
        String t = s.substring(start, i);
        if (t.isEmpty() || t.equals("-")) throw err("expected a value");
        if (!frac && t.replace("-", "").length() > MAX_INT_DIGITS) throw err("an integer of " + t.length() + " digits");
        try {
            if (!frac) return Long.parseLong(t);
            double d = Double.parseDouble(t);
            if (Double.isInfinite(d)) throw err("number " + t + " overflows binary64");
            return d;
        } catch (NumberFormatException ex) {
            if (!frac) return Double.parseDouble(t); // integers of 19-20 digits beyond 64 bits: never valid here
            throw err("bad number " + t);
        }
    }
}
