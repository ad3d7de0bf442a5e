package org.shira.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** The safetensors container (docs/FORMAT.md §1): an 8-byte little-endian header length, a JSON header, the
 *  data region. The ONE parser of this project's Java code: adapter blobs and the base's weights.safetensors
 *  both go through it, so every entry is checked (known dtype, shape, offsets inside the data region, length
 *  equal to shape x dtype size) before anything reads a byte of it. Works on any ByteBuffer (a heap array, a
 *  direct buffer the app patches, a memory-mapped file) without copying it. */
public final class Safetensors {
    public static final long MAX_HEADER = 16L * 1024 * 1024;

    /** One tensor: its dtype, shape and the absolute byte range [begin, end) in the file. */
    public static final class Entry {
        public final String dtype;
        public final long[] shape;
        public final long begin, end;

        Entry(String dtype, long[] shape, long begin, long end) {
            this.dtype = dtype; this.shape = shape; this.begin = begin; this.end = end;
        }
    }

    public final String source;
    public final int dataStart;
    public final Map<String, String> metadata;
    public final Map<String, Entry> tensors;

    private Safetensors(String source, int dataStart, Map<String, String> metadata, Map<String, Entry> tensors) {
        this.source = source; this.dataStart = dataStart;
        this.metadata = Collections.unmodifiableMap(metadata); this.tensors = Collections.unmodifiableMap(tensors);
    }

    public static Safetensors parse(byte[] file, String source) throws AdapterFormatException {
        return parse(ByteBuffer.wrap(file), source);
    }

    /** Parse the header of `file` (position 0 to its capacity); `source` names it in every error. */
    public static Safetensors parse(ByteBuffer file, String source) throws AdapterFormatException {
        int length = file.capacity();
        if (length < 8) throw fail(source, "truncated: " + length + " bytes, not a safetensors file");
        long n = file.duplicate().order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        if (n < 0 || n > MAX_HEADER) throw fail(source, "corrupt: header of " + n + " bytes, more than the " + MAX_HEADER + " allowed");
        if (n < 2 || n > length - 8) throw fail(source, "truncated or corrupt: header of " + n + " bytes in a " + length + "-byte file");
        Object h;
        try {
            ByteBuffer head = file.duplicate();
            head.limit(8 + (int) n).position(8);
            String text = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT).decode(head).toString();
            h = Json.parse(text);
        } catch (CharacterCodingException e) {
            throw fail(source, "corrupt header: not UTF-8");
        } catch (IllegalArgumentException e) {
            throw fail(source, "corrupt header: " + e.getMessage());
        }
        if (!(h instanceof Map)) throw fail(source, "corrupt header: not a JSON object");
        int dataStart = 8 + (int) n;
        long dataLen = length - dataStart;
        Map<String, String> metadata = new LinkedHashMap<>();
        Map<String, Entry> tensors = new LinkedHashMap<>();
        for (Map.Entry<?, ?> kv : ((Map<?, ?>) h).entrySet()) {
            String key = (String) kv.getKey();
            if (key.equals("__metadata__")) {
                if (!(kv.getValue() instanceof Map)) throw fail(source, "corrupt header: __metadata__ is not an object");
                for (Map.Entry<?, ?> m : ((Map<?, ?>) kv.getValue()).entrySet()) {
                    if (!(m.getValue() instanceof String)) throw fail(source, "corrupt header: metadata value is not a string");
                    metadata.put((String) m.getKey(), (String) m.getValue());
                }
                continue;
            }
            if (!(kv.getValue() instanceof Map)) throw fail(source, "corrupt header: entry " + key);
            Map<?, ?> t = (Map<?, ?>) kv.getValue();
            Object dt = t.get("dtype"), sh = t.get("shape"), off = t.get("data_offsets");
            if (!(dt instanceof String) || !(sh instanceof List) || !(off instanceof List) || ((List<?>) off).size() != 2)
                throw fail(source, "corrupt header: entry " + key);
            List<?> shl = (List<?>) sh, ofl = (List<?>) off;
            long[] shape = new long[shl.size()];
            long count = 1;
            if (shape.length > 8) throw fail(source, "corrupt header: entry " + key);
            for (int k = 0; k < shape.length; k++) {
                if (!(shl.get(k) instanceof Long) || (Long) shl.get(k) < 0) throw fail(source, "corrupt header: entry " + key);
                shape[k] = (Long) shl.get(k);
                if (shape[k] != 0 && count > Long.MAX_VALUE / 8 / shape[k]) throw fail(source, "corrupt header: entry " + key);
                count *= shape[k];
            }
            if (!(ofl.get(0) instanceof Long) || !(ofl.get(1) instanceof Long)) throw fail(source, "corrupt header: entry " + key);
            long b = (Long) ofl.get(0), e = (Long) ofl.get(1);
            int size = Codings.dtypeSize((String) dt);
            if (size < 0) throw fail(source, "corrupt header: unknown dtype " + dt);
            if (b < 0 || b > e || e > dataLen) throw fail(source, "truncated: buffer " + key + " lies outside the data region");
            if (e - b != count * size) throw fail(source, "corrupt header: buffer " + key + " has the wrong length");
            tensors.put(key, new Entry((String) dt, shape, dataStart + b, dataStart + e));
        }
        return new Safetensors(source, dataStart, metadata, tensors);
    }

    /** A copy of an entry's bytes. */
    public byte[] bytes(ByteBuffer file, Entry e) {
        byte[] out = new byte[(int) (e.end - e.begin)];
        ByteBuffer d = file.duplicate();
        d.position((int) e.begin);
        d.get(out);
        return out;
    }

    /** A little-endian float32 view of an F32 entry that reads and writes `file` itself (no copy). */
    public FloatBuffer floats(ByteBuffer file, String name) throws AdapterFormatException {
        Entry e = tensors.get(name);
        if (e == null) throw fail(source, "no tensor " + name);
        if (!e.dtype.equals("F32")) throw fail(source, "tensor " + name + " is " + e.dtype + ", not F32");
        return region(file, e.begin, e.end);
    }

    /** A little-endian float32 view of bytes [begin, end) of `buffer`. */
    public static FloatBuffer region(ByteBuffer buffer, long begin, long end) {
        ByteBuffer d = buffer.duplicate();
        d.limit((int) end).position((int) begin);
        return d.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
    }

    static AdapterFormatException fail(String source, String msg) {
        return new AdapterFormatException(source + ": " + msg);
    }
}
