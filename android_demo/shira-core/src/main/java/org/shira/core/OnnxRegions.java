package org.shira.core;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Where an optimized .onnx keeps its external weights: a minimal protobuf reader, the Java twin of the Python
 *  runtime's inplace/regions.py (read_regions), so the app needs no ONNX or protobuf library to bake.
 *
 *  ONNX Runtime writes an optimized model's large initializers into one data file; each initializer's
 *  `external_data` gives its `offset` and `length` there, and a weight ORT prepacked carries `prepacked_<i>`
 *  entries "<kernel key>|<offset>;<length>;<flags>" naming where its packed copy lies in the same file.
 *
 *  Only the fields read here are decoded (onnx.proto3): ModelProto.graph = 7; GraphProto.node = 1,
 *  GraphProto.initializer = 5; NodeProto.input = 1; TensorProto.name = 8, external_data = 13 (key = 1, value = 2).
 *  Also read: every external_data `location` (the files a model's external initializers live in). */
public final class OnnxRegions {
    /** One external region of the data file. */
    public static final class Region {
        public final String initializer; // the initializer whose bytes (or packed bytes) these are
        public final String kind;        // "data" (the initializer as stored) or "prepacked" (a kernel's copy)
        public final long offset, length;

        public Region(String initializer, String kind, long offset, long length) {
            this.initializer = initializer; this.kind = kind; this.offset = offset; this.length = length;
        }

        @Override
        public boolean equals(Object o) {
            if (!(o instanceof Region)) return false;
            Region r = (Region) o;
            return initializer.equals(r.initializer) && kind.equals(r.kind) && offset == r.offset && length == r.length;
        }

        @Override
        public int hashCode() { return (initializer.hashCode() * 31 + kind.hashCode()) * 31 + Long.hashCode(offset ^ length); }

        @Override
        public String toString() { return initializer + " (" + kind + ", " + length + " bytes at " + offset + ")"; }
    }

    /** Every external region of the model's initializers, in the order Python's read_regions gives them. */
    public final List<Region> regions;
    /** Initializer (or any value) name -> how many node inputs use it. */
    public final Map<String, Integer> uses;
    /** The external_data locations the initializers name (files beside the model), in first-seen order. */
    public final List<String> locations;

    private OnnxRegions(List<Region> regions, Map<String, Integer> uses, List<String> locations) {
        this.regions = Collections.unmodifiableList(regions); this.uses = Collections.unmodifiableMap(uses);
        this.locations = Collections.unmodifiableList(locations);
    }

    /** Read the regions of a serialized ModelProto; `source` names it in errors. */
    public static OnnxRegions read(byte[] model, String source) throws IOException {
        try {
            List<Region> regions = new ArrayList<>();
            Map<String, Integer> uses = new LinkedHashMap<>();
            List<String> locations = new ArrayList<>();
            for (Field g = new Field(model, 0, model.length); g.next(); ) {
                if (g.number != 7 || g.wire != 2) continue; // ModelProto.graph (fields of repeated occurrences merge)
                for (Field f = g.message(); f.next(); ) {
                    if (f.wire != 2) continue;
                    if (f.number == 1) { // NodeProto: count its inputs
                        for (Field n = f.message(); n.next(); )
                            if (n.number == 1 && n.wire == 2 && n.length > 0) {
                                String name = n.string();
                                Integer k = uses.get(name);
                                uses.put(name, k == null ? 1 : k + 1);
                            }
                    } else if (f.number == 5) {
                        tensor(f.message(), regions, locations);
                    }
                }
            }
            return new OnnxRegions(regions, uses, locations);
        } catch (IllegalArgumentException | IndexOutOfBoundsException e) {
            throw new IOException(source + ": not a readable ONNX model (" + e.getMessage() + ")");
        }
    }

    private static void tensor(Field t, List<Region> regions, List<String> locations) {
        String name = "";
        Map<String, String> entries = new LinkedHashMap<>(); // as a Python dict: a key seen again keeps its place
        while (t.next()) {
            if (t.number == 8 && t.wire == 2) {
                name = t.string();
            } else if (t.number == 13 && t.wire == 2) {
                String key = "", value = "";
                for (Field e = t.message(); e.next(); ) {
                    if (e.wire != 2) continue;
                    if (e.number == 1) key = e.string();
                    else if (e.number == 2) value = e.string();
                }
                entries.put(key, value);
            }
        }
        if (entries.containsKey("offset") || entries.containsKey("length")) {
            if (!entries.containsKey("length"))
                throw new IllegalArgumentException("initializer " + name + " has external data without a length");
            String off = entries.get("offset");
            regions.add(new Region(name, "data", off == null ? 0 : number(off), number(entries.get("length"))));
        }
        String location = entries.get("location");
        if (location != null && !locations.contains(location)) locations.add(location);
        for (Map.Entry<String, String> e : entries.entrySet()) {
            if (!e.getKey().startsWith("prepacked_")) continue;
            String value = e.getValue();
            int bar = value.indexOf('|');
            if (bar < 0) continue;
            for (String blob : value.substring(bar + 1).split("\\|", -1)) {
                String[] parts = blob.split(";", -1);
                if (parts.length < 2)
                    throw new IllegalArgumentException("initializer " + name + ": prepacked entry " + value + " is not offset;length");
                regions.add(new Region(name, "prepacked", number(parts[0]), number(parts[1])));
            }
        }
    }

    private static long number(String s) {
        long v = Long.parseLong(s.trim()); // NumberFormatException is an IllegalArgumentException
        if (v < 0) throw new IllegalArgumentException("negative offset or length " + s);
        return v;
    }

    /** A cursor over the fields of one protobuf message: buf[begin, end). */
    private static final class Field {
        final byte[] buf;
        final int end;
        int at;
        int number, wire;
        int start, length; // a length-delimited value's bytes: buf[start, start + length)

        Field(byte[] buf, int begin, int end) { this.buf = buf; this.at = begin; this.end = end; }

        boolean next() {
            if (at >= end) return false;
            long key = varint();
            number = (int) (key >>> 3);
            wire = (int) (key & 7);
            switch (wire) {
                case 0: varint(); length = 0; break;
                case 1: skip(8); break;
                case 2: {
                    long size = varint();
                    if (size < 0 || size > end - at) throw new IllegalArgumentException("a field runs past its message");
                    skip((int) size);
                    break;
                }
                case 5: skip(4); break;
                default: throw new IllegalArgumentException("unsupported protobuf wire type " + wire);
            }
            return true;
        }

        private void skip(int n) {
            if (n > end - at) throw new IllegalArgumentException("a field runs past its message");
            start = at;
            length = n;
            at += n;
        }

        private long varint() {
            long result = 0;
            for (int shift = 0; ; shift += 7) {
                if (at >= end || shift > 63) throw new IllegalArgumentException("a truncated varint");
                int b = buf[at++] & 0xFF;
                result |= (long) (b & 0x7F) << shift;
                if (b < 0x80) return result;
            }
        }

        Field message() { return new Field(buf, start, start + length); }

        String string() { return new String(buf, start, length, StandardCharsets.UTF_8); }
    }
}
