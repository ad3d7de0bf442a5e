package org.shira.core;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.LinkedHashMap;
import java.util.Map;

/** Host tool for tests/test_java_core.py: opens an exported base the way the app does and writes the patched
 *  bytes, so Python can check them bit for bit against its runtime and run them in the real engines.
 *
 *  usage: PatchBaseTool BASE_DIR RUNTIME OUT RULE NAME=BLOB:SCALE...
 *  onnxruntime: weights.safetensors is read into a direct buffer (as the app does) and written to OUT.
 *  executorch: model.pte is copied to OUT and patched through a writable mapping of OUT (as the app does). */
public final class PatchBaseTool {
    public static void main(String[] args) throws Exception {
        File base = new File(args[0]);
        String runtime = args[1];
        File out = new File(args[2]);
        String rule = args[3];
        String manifest = new String(Files.readAllBytes(new File(base, "manifest.json").toPath()), StandardCharsets.UTF_8);
        ByteBuffer bytes;
        FileChannel channel = null;
        if (runtime.equals(PatchableBase.ONNXRUNTIME)) {
            byte[] file = Files.readAllBytes(new File(base, "weights.safetensors").toPath());
            bytes = ByteBuffer.allocateDirect(file.length);
            bytes.put(file);
        } else {
            Files.copy(new File(base, "model.pte").toPath(), out.toPath(), StandardCopyOption.REPLACE_EXISTING);
            channel = FileChannel.open(out.toPath(), StandardOpenOption.READ, StandardOpenOption.WRITE);
            bytes = channel.map(FileChannel.MapMode.READ_WRITE, 0, channel.size());
        }
        PatchableBase b = PatchableBase.open(manifest, "manifest.json", runtime, bytes, runtime.equals("onnxruntime")
                ? "weights.safetensors" : "model.pte");
        Map<String, Double> scales = new LinkedHashMap<>();
        for (int i = 4; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            int colon = kv[1].lastIndexOf(':');
            File blob = new File(kv[1].substring(0, colon));
            b.loadAdapter(kv[0], Files.readAllBytes(blob.toPath()), blob.getName());
            scales.put(kv[0], Double.parseDouble(kv[1].substring(colon + 1)));
        }
        Map<String, WeightPatcher.Plan> plans = b.patcher.plan(scales, rule);
        boolean reload = b.needsReload(b.patcher.changedBy(plans));
        b.patcher.commit(plans);
        if (channel != null) {
            ((java.nio.MappedByteBuffer) bytes).force();
            channel.close();
        } else {
            byte[] all = new byte[bytes.capacity()];
            bytes.position(0);
            bytes.get(all);
            Files.write(out.toPath(), all);
        }
        System.out.println("patched " + b.patcher.patchedEntries() + " entries; reload " + reload);
    }
}
