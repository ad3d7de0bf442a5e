package org.shira.core;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;

/** Host tool for tests/test_java_bake.py: the app's Java bake ({@link Baker}) with ONNX Runtime played by the
 *  Python process that started it (this machine has no ORT Java jar).
 *
 *  usage: BakeTool EXPORT_DIR OUT_DIR ORT_VERSION
 *  Each time the Baker asks ORT to optimize a model it prints "bake SOURCE_MODEL OUT_DIR" and waits for one line
 *  on stdin: "done" (Python baked it, with bake._bake_once's options) or "error MESSAGE". Progress lines are
 *  printed as "progress MESSAGE"; the end as "ok N" (N placements mapped), or "cannot MESSAGE" (a
 *  CannotBakeException), "unsupported MESSAGE", "damaged MESSAGE", with exit status 3 for all three. */
public final class BakeTool {
    public static void main(String[] args) throws Exception {
        File export = new File(args[0]);
        String manifest = new String(Files.readAllBytes(new File(export, "manifest.json").toPath()), StandardCharsets.UTF_8);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        Baker.Optimizer python = (source, outDir) -> {
            System.out.println("bake " + source.getPath() + " " + outDir.getPath());
            System.out.flush();
            String reply = in.readLine();
            if (reply == null || !reply.equals("done"))
                throw new IOException("ONNX Runtime cannot bake " + source + ": " + (reply == null ? "no reply" : reply));
        };
        String verdict;
        try {
            int n = ((java.util.Map<?, ?>) Baker.bake(export, manifest, new File(args[1]), python, args[2],
                    m -> System.out.println("progress " + m)).get("placements")).size();
            System.out.println("ok " + n);
            return;
        } catch (Baker.CannotBakeException e) {
            verdict = "cannot " + e.getMessage();
        } catch (UnsupportedOperationException e) {
            verdict = "unsupported " + e.getMessage();
        } catch (AdapterFormatException e) {
            verdict = "damaged " + e.getMessage();
        }
        System.out.println(verdict);
        System.out.flush();
        System.exit(3);
    }
}
