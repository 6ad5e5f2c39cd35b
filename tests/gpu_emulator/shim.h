// CPU stand-ins for the CUDA built-ins, so an UNCHANGED .cu kernel compiles with g++ (-include shim.h -x c++)
// and runs on the CPU one thread at a time, launched through xpnet_emu::launch like cuLaunchKernel.
#pragma once
#include <cstddef>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x = 1, y = 1, z = 1; };

// The launch coordinates the kernel reads; set by xpnet_emu::launch before each emulated thread runs.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// A plain read-modify-write: exact here because emulated threads never overlap.
template <typename T>
inline T atomicAdd(T* address, T value) { T old = *address; *address = old + value; return old; }

namespace xpnet_emu {

// Call kernel with each argument read from args[i], as cuLaunchKernel reads its kernelParams array.
template <typename... A, std::size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(args[I])...);
}

// Run the threads of grid x block whose linear id (block-major, x fastest) is in [first, last), one at a time.
template <typename... A>
void launch(void (*kernel)(A...), const unsigned* grid, const unsigned* block, void** args,
            unsigned long long first, unsigned long long last) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    const unsigned long long threads = 1ULL * block[0] * block[1] * block[2];
    for (unsigned long long k = first; k < last; ++k) {
        const unsigned long long b = k / threads, t = k % threads;
        blockIdx = {unsigned(b % grid[0]), unsigned(b / grid[0] % grid[1]), unsigned(b / grid[0] / grid[1])};
        threadIdx = {unsigned(t % block[0]), unsigned(t / block[0] % block[1]), unsigned(t / block[0] / block[1])};
        call(kernel, args, std::index_sequence_for<A...>{});
    }
}

}  // namespace xpnet_emu
