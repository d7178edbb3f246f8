# The hwid provider benchmark (docs/benchmarks.md, bench/run-provider-bench). Included from
# bench/CMakeLists.txt when the provider module is built.
if(EXISTS ${PROJECT_SOURCE_DIR}/provider/CMakeLists.txt)
  add_executable(provider_bench provider_bench.cc)
  target_link_libraries(provider_bench PRIVATE hwid::tpm_wire hwid::common PkgConfig::TSS2
    OpenSSL::SSL OpenSSL::Crypto hwid::build_flags)
  target_compile_definitions(provider_bench PRIVATE
    HWID_PROVIDER_DIR="$<TARGET_FILE_DIR:hwid_provider>")
  add_dependencies(provider_bench hwid_provider)
endif()
# Many processes signing at once on a TPM without a resource manager
# (docs/benchmarks.md "Many processes on one TPM", bench/run-shared-tpm-bench).
if(EXISTS ${PROJECT_SOURCE_DIR}/provider/CMakeLists.txt)
  add_executable(shared_tpm_bench shared_tpm_bench.cc)
  target_link_libraries(shared_tpm_bench PRIVATE absl::strings OpenSSL::Crypto hwid::build_flags)
  target_compile_definitions(shared_tpm_bench PRIVATE
    HWID_PROVIDER_DIR="$<TARGET_FILE_DIR:hwid_provider>")
  add_dependencies(shared_tpm_bench hwid_provider)
endif()
