// tinygemma-llama: runs a GGUF in llama.cpp (through llama.h only) and prints what the tests
// and benchmarks compare with tinygemma's own model. Built by `make llama-cpp` (llamacpp.py).
//
//   tinygemma-llama MODEL.gguf logits OUT.f32 [options] < ids   logits (n_tokens, n_vocab) as raw float32
//   tinygemma-llama MODEL.gguf nll WINDOW [options] < ids        JSON: summed NLL (nats) of each next token
//                                                                 within consecutive windows of WINDOW ids
//   tinygemma-llama MODEL.gguf greedy N [options] < ids         JSON: N argmax tokens after the prompt ids,
//                                                                 prefill and decode seconds
// options: --kv f32|f16 (KV cache type, default f16 as llama.cpp's tools), --threads N,
//          --flash-attn on|off|auto (default auto). Token ids come whitespace-separated on stdin.

#include "llama.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// decode ids[begin, end) from position 0 of an empty cache; logits for every position if all_logits
static void decode(llama_context * ctx, const std::vector<llama_token> & ids, size_t begin, size_t end, bool all_logits) {
    llama_memory_clear(llama_get_memory(ctx), true);
    const int n = (int) (end - begin);
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        batch.token[i] = ids[begin + i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = all_logits || i == n - 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        exit(1);
    }
    llama_batch_free(batch);
}

static int argmax(const float * logits, int n_vocab) {
    int best = 0;
    for (int v = 1; v < n_vocab; ++v) if (logits[v] > logits[best]) best = v;
    return best;
}

static double nll_of(const float * logits, int n_vocab, int target) {
    double mx = logits[0], sum = 0.0;
    for (int v = 1; v < n_vocab; ++v) mx = std::max(mx, (double) logits[v]);
    for (int v = 0; v < n_vocab; ++v) sum += std::exp((double) logits[v] - mx);
    return mx + std::log(sum) - logits[target];
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf logits OUT | nll WINDOW | greedy N [--kv f32|f16] [--threads N] "
                        "[--flash-attn on|off|auto] < ids\n", argv[0]);
        return 2;
    }
    const std::string path = argv[1], mode = argv[2], arg = argv[3];
    ggml_type kv = GGML_TYPE_F16;
    int threads = (int) std::thread::hardware_concurrency();
    llama_flash_attn_type fa = LLAMA_FLASH_ATTN_TYPE_AUTO;
    for (int i = 4; i + 1 < argc; i += 2) {
        const std::string opt = argv[i], val = argv[i + 1];
        if (opt == "--kv") kv = val == "f32" ? GGML_TYPE_F32 : GGML_TYPE_F16;
        else if (opt == "--threads") threads = std::atoi(val.c_str());
        else if (opt == "--flash-attn") fa = val == "on" ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                         : val == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_AUTO;
        else { fprintf(stderr, "unknown option %s\n", opt.c_str()); return 2; }
    }
    std::vector<llama_token> ids;
    for (long t; std::cin >> t;) ids.push_back((llama_token) t);
    if (ids.empty()) { fprintf(stderr, "no token ids on stdin\n"); return 2; }

    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.progress_callback = [](float, void *) { return true; };  // no progress dots on stderr
    llama_model * model = llama_model_load_from_file(path.c_str(), mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", path.c_str()); return 1; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const int n_new = mode == "greedy" ? std::atoi(arg.c_str()) : 0;
    const int window = mode == "nll" ? std::atoi(arg.c_str()) : (int) ids.size();

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) (std::min((int) ids.size(), window) + n_new);
    cp.n_batch = cp.n_ubatch = (uint32_t) std::min((int) ids.size(), window);
    cp.n_threads = cp.n_threads_batch = threads;
    cp.type_k = cp.type_v = kv;
    cp.flash_attn_type = fa;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a llama.cpp context\n"); return 1; }

    if (mode == "logits") {
        decode(ctx, ids, 0, ids.size(), true);
        FILE * f = fopen(arg.c_str(), "wb");
        for (size_t i = 0; i < ids.size(); ++i) fwrite(llama_get_logits_ith(ctx, (int) i), sizeof(float), n_vocab, f);
        fclose(f);
        printf("{\"n_tokens\": %zu, \"n_vocab\": %d}\n", ids.size(), n_vocab);
    } else if (mode == "nll") {
        double total = 0.0;
        long predicted = 0;
        for (size_t begin = 0; begin + 1 < ids.size(); begin += window) {
            const size_t end = std::min(ids.size(), begin + window);
            decode(ctx, ids, begin, end, true);
            for (size_t i = begin; i + 1 < end; ++i, ++predicted)
                total += nll_of(llama_get_logits_ith(ctx, (int) (i - begin)), n_vocab, ids[i + 1]);
        }
        printf("{\"nll\": %.9g, \"predicted\": %ld}\n", total, predicted);
    } else if (mode == "greedy") {
        auto t0 = std::chrono::steady_clock::now();
        decode(ctx, ids, 0, ids.size(), false);
        const double prefill = seconds_since(t0);
        std::vector<llama_token> out;
        t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < n_new; ++i) {
            llama_token next = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
            out.push_back(next);
            if (i + 1 < n_new && llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) {
                fprintf(stderr, "llama_decode failed\n");
                return 1;
            }
        }
        printf("{\"ids\": [");
        for (size_t i = 0; i < out.size(); ++i) printf(i ? ", %d" : "%d", out[i]);
        printf("], \"prefill_s\": %.6f, \"decode_s\": %.6f}\n", prefill, seconds_since(t0));
    } else {
        fprintf(stderr, "unknown mode %s: use logits, nll or greedy\n", mode.c_str());
        return 2;
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
