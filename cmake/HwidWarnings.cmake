# Warnings and sanitizers as INTERFACE targets every hwid target links.
add_library(hwid_build_flags INTERFACE)
add_library(hwid::build_flags ALIAS hwid_build_flags)
target_compile_options(hwid_build_flags INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Wformat=2
  -Wimplicit-fallthrough -Wno-missing-field-initializers)
if(HWID_WERROR)
  target_compile_options(hwid_build_flags INTERFACE -Werror)
endif()
if(HWID_SANITIZE)
  target_compile_options(hwid_build_flags INTERFACE
    -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  target_link_options(hwid_build_flags INTERFACE -fsanitize=address,undefined)
endif()
