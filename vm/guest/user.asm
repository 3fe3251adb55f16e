; toyos user programs: one image, mapped read-only at 0x400000 in every process.
;
; The image starts with the table of entry points: spawn(n) starts program n, with its
; argument in EBX. The workloads are named after the Xen paper's benchmarks:
;   compute (SPEC INT), syscalls (lmbench null call), spawn (process creation,
;   forkwait), pagetable (ptemod), io (console traffic).

bits 32
org 0x400000

SYS_EXIT    equ 0
SYS_WRITE   equ 1
SYS_GETPID  equ 2
SYS_YIELD   equ 3
SYS_SLEEP   equ 4
SYS_SPAWN   equ 5
SYS_WAIT    equ 6
SYS_MAP     equ 7
SYS_UNMAP   equ 8

PROGRAM_CHILD equ 6
MAP_BASE    equ 0x404000                ; first address map() accepts

programs:
    dd init                             ; 0
    dd compute                          ; 1
    dd syscalls                         ; 2
    dd spawner                          ; 3
    dd pagetable                        ; 4
    dd io                               ; 5
    dd child                            ; 6
    dd faulty                           ; 7
    dd sleeper                          ; 8
    dd all_workloads                    ; 9

%macro sys 1
    mov eax, %1
    int 0x80
%endmacro

; ---- init: start the workload named by EBX, wait for it, report --------------------------
init:
    mov ecx, 0
    sys SYS_SPAWN
    cmp eax, 0
    jl .failed
    mov ebx, eax
    sys SYS_WAIT
    mov esi, msg_init_done
    call puts
    call putdec
    call newline
    mov ebx, 0
    sys SYS_EXIT
.failed:
    mov esi, msg_init_failed
    call puts
    mov ebx, 1
    sys SYS_EXIT

; ---- all: every workload in turn (and a faulty process in the middle) ----------------------
all_workloads:
    mov edi, 1
.next:
    mov ebx, edi
    mov ecx, 0
    sys SYS_SPAWN
    mov ebx, eax
    sys SYS_WAIT
    inc edi
    cmp edi, 9
    jne .next
    mov ebx, 0
    sys SYS_EXIT

; ---- compute: integer work with no system calls (SPEC INT) ----------------------------------
compute:
    mov ecx, 3000000
    mov eax, 12345
    xor ebx, ebx
.loop:
    imul eax, eax, 1103515245
    add eax, 12345
    mov edx, eax
    shr edx, 16
    xor ebx, edx
    rol ebx, 3
    test edx, 1
    jz .even
    add ebx, ecx
.even:
    dec ecx
    jnz .loop
    mov esi, msg_compute
    call puts
    mov eax, ebx
    call puthex
    call newline
    mov ebx, 0
    sys SYS_EXIT

; ---- syscalls: the null system call, many times (lmbench) ----------------------------------
syscalls:
    mov edi, 2000
.loop:
    sys SYS_GETPID
    dec edi
    jnz .loop
    mov esi, msg_syscalls
    call puts
    mov ebx, 0
    sys SYS_EXIT

; ---- spawn: create processes and wait for each (forkwait) ----------------------------------
spawner:
    mov edi, 20
    xor ebp, ebp                        ; the sum of their exit codes
.loop:
    mov ebx, PROGRAM_CHILD
    mov ecx, edi
    sys SYS_SPAWN
    cmp eax, 0
    jl .failed
    mov ebx, eax
    sys SYS_WAIT
    add ebp, eax
    dec edi
    jnz .loop
    mov esi, msg_spawn
    call puts
    mov eax, ebp
    call putdec
    call newline
    mov ebx, 0
    sys SYS_EXIT
.failed:
    mov esi, msg_spawn_failed
    call puts
    mov ebx, 1
    sys SYS_EXIT

child:
    sys SYS_GETPID                  ; a child does a little work, then exits
    sys SYS_EXIT                    ; with its argument (EBX) as its exit code

; ---- pagetable: map, touch and unmap ranges of pages (ptemod) ---------------------------
; Each round maps a range of pages, writes and reads each one, and unmaps the range: one
; system call updates several page-table entries, as munmap or mprotect of a range does.
MAP_PAGES   equ 4
pagetable:
    mov edi, 50
    xor ebp, ebp
.loop:
    mov ebx, MAP_BASE
    mov ecx, MAP_PAGES
    sys SYS_MAP
    test eax, eax
    jnz .failed
    mov esi, MAP_BASE
    mov ecx, MAP_PAGES
.touch:                                 ; a fresh page is zero; write it, read it back
    add dword [esi], 0x1234
    add ebp, [esi]
    add esi, 0x1000
    loop .touch
    mov ebx, MAP_BASE
    mov ecx, MAP_PAGES
    sys SYS_UNMAP
    test eax, eax
    jnz .failed
    dec edi
    jnz .loop
    mov esi, msg_pagetable
    call puts
    mov eax, ebp
    call puthex
    call newline
    mov ebx, 0
    sys SYS_EXIT
.failed:
    mov esi, msg_map_failed
    call puts
    mov ebx, 1
    sys SYS_EXIT

; ---- io: console traffic -------------------------------------------------------------------
io:
    mov edi, 1
.loop:
    mov esi, msg_io
    call puts
    mov eax, edi
    call putdec
    call newline
    inc edi
    cmp edi, 41
    jne .loop
    mov ebx, 0
    sys SYS_EXIT

; ---- faulty: touches kernel memory; toyos kills it, the others go on --------------------------
faulty:
    mov esi, msg_faulty
    call puts
    mov eax, [0x1000]                   ; the kernel: supervisor only -> #PF
    mov ebx, 0
    sys SYS_EXIT

; ---- sleeper: sleeps, yields, and says so -------------------------------------------------------
sleeper:
    mov ebx, 3
    sys SYS_SLEEP
    sys SYS_YIELD
    mov esi, msg_sleeper
    call puts
    mov ebx, 0
    sys SYS_EXIT

; ---- a tiny C library ---------------------------------------------------------------------------
; puts: ESI = a zero-terminated string. Keeps EAX.
puts:
    push eax
    push ebx
    push ecx
    mov ebx, esi
    xor ecx, ecx
.length:
    cmp byte [esi + ecx], 0
    je .write
    inc ecx
    jmp .length
.write:
    sys SYS_WRITE
    pop ecx
    pop ebx
    pop eax
    ret

newline:
    push esi
    mov esi, msg_newline
    call puts
    pop esi
    ret

; putdec: EAX, unsigned, in decimal (built on the stack).
putdec:
    push eax
    push ebx
    push ecx
    push edx
    push esi
    sub esp, 16
    lea esi, [esp + 15]
    mov byte [esi], 0
    mov ecx, 10
.digit:
    xor edx, edx
    div ecx
    add dl, '0'
    dec esi
    mov [esi], dl
    test eax, eax
    jnz .digit
    call puts
    add esp, 16
    pop esi
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

; puthex: EAX, as 8 hex digits.
puthex:
    push eax
    push ecx
    push edx
    push esi
    sub esp, 12
    mov esi, esp
    mov ecx, 8
.digit:
    rol eax, 4
    mov edx, eax
    and edx, 15
    mov dl, [hex_digits + edx]
    mov [esi], dl
    inc esi
    loop .digit
    mov byte [esi], 0
    mov esi, esp
    call puts
    add esp, 12
    pop esi
    pop edx
    pop ecx
    pop eax
    ret

hex_digits:         db "0123456789abcdef"
msg_newline:        db 10, 0
msg_init_done:      db "init: workload exited with ", 0
msg_init_failed:    db "init: could not start the workload", 10, 0
msg_compute:        db "compute: checksum ", 0
msg_syscalls:       db "syscalls: 2000 getpid calls", 10, 0
msg_spawn:          db "spawn: 20 children, exit codes sum to ", 0
msg_spawn_failed:   db "spawn: could not create a process", 10, 0
msg_pagetable:      db "pagetable: 50 rounds of 4 pages mapped and unmapped, sum ", 0
msg_map_failed:     db "pagetable: map failed", 10, 0
msg_io:             db "io: line ", 0
msg_faulty:         db "faulty: touching kernel memory", 10, 0
msg_sleeper:        db "sleeper: slept and yielded", 10, 0
