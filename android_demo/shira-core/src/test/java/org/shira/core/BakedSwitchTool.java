package org.shira.core;

import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.LinkedHashMap;
import java.util.Map;

/** Host tool for tests/test_java_inplace.py: the app's core switching styles on ONNX Runtime's own packed
 *  weights, written through a shared mapping of a copy of a bake's baked.bin while a Python process runs an ORT
 *  session over that copy.
 *
 *  usage: BakedSwitchTool BASE_DIR BAKE_DIR DATA_FILE NAME=BLOB...
 *  Opens BASE_DIR for onnxruntime as the app does (weights.safetensors in a direct buffer), loads the blobs and
 *  BakedWeights over DATA_FILE, prints "ready", then reads one state a line from stdin: "base" (nothing),
 *  "reset", "switch:NAME" or "fuse:NAME=SCALE,NAME=SCALE:RULE". Each state is committed to the patcher, the
 *  entries it touched are mirrored into DATA_FILE, and it prints "ok N" (N entries mirrored) or "error MESSAGE".
 *
 *  usage: BakedSwitchTool --fill BAKE_DIR DATA_FILE PLACEMENT=NUMEL...
 *  Writes f + 1 at every entry f of each placement (every copy), to check the position forms against Python's. */
public final class BakedSwitchTool {
    public static void main(String[] args) throws Exception {
        if (args[0].equals("--fill")) { fill(args); return; }
        File base = new File(args[0]);
        String manifest = new String(Files.readAllBytes(new File(base, "manifest.json").toPath()), StandardCharsets.UTF_8);
        byte[] file = Files.readAllBytes(new File(base, "weights.safetensors").toPath());
        ByteBuffer bytes = ByteBuffer.allocateDirect(file.length);
        bytes.put(file);
        PatchableBase b = PatchableBase.open(manifest, "manifest.json", PatchableBase.ONNXRUNTIME, bytes,
                "weights.safetensors");
        for (int i = 3; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            File blob = new File(kv[1]);
            b.loadAdapter(kv[0], Files.readAllBytes(blob.toPath()), blob.getName());
        }
        try (BakedWeights baked = BakedWeights.open(new File(args[1]), new File(args[2]))) {
            if (!baked.placements().containsAll(b.buffers.keySet()))
                throw new IllegalStateException("the bake lacks placements of the base");
            System.out.println("ready");
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            for (String line; (line = in.readLine()) != null; ) {
                try {
                    System.out.println("ok " + apply(b, baked, line.trim()));
                } catch (AdapterFormatException | RuntimeException e) {
                    System.out.println("error " + e.getMessage());
                }
            }
        }
    }

    private static void fill(String[] args) throws Exception {
        try (BakedWeights baked = BakedWeights.open(new File(args[1]), new File(args[2]))) {
            for (int i = 3; i < args.length; i++) {
                String[] kv = args[i].split("=", 2);
                int[] entries = new int[Integer.parseInt(kv[1])];
                FloatBuffer values = FloatBuffer.allocate(entries.length);
                for (int f = 0; f < entries.length; f++) { entries[f] = f; values.put(f, f + 1); }
                baked.write(kv[0], entries, values);
            }
        }
    }

    private static int apply(PatchableBase b, BakedWeights baked, String state) throws AdapterFormatException {
        Map<String, Double> scales = new LinkedHashMap<>();
        String rule = "sum";
        if (state.equals("base")) return 0;
        if (state.startsWith("switch:")) {
            scales.put(state.substring(7), 1.0);
        } else if (state.startsWith("fuse:")) {
            String[] parts = state.substring(5).split(":");
            for (String kv : parts[0].split(",")) {
                String[] nv = kv.split("=");
                scales.put(nv[0], Double.parseDouble(nv[1]));
            }
            rule = parts[1];
        } else if (!state.equals("reset")) {
            throw new IllegalArgumentException("unknown state " + state);
        }
        Map<String, WeightPatcher.Plan> plans = b.patcher.plan(scales, rule);
        Map<String, int[]> touched = b.patcher.touchedBy(plans);
        b.patcher.commit(plans);
        baked.mirror(touched, b.buffers);
        int n = 0;
        for (int[] t : touched.values()) n += t.length;
        return n;
    }
}
