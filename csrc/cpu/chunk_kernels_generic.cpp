// The chunk kernels compiled for baseline x86-64 / any CPU (the fallback).
#define XSAM_HAS_FMA 0
#define XSAM_ISA generic
#include "chunk_kernels.h"
