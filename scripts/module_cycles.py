#!/usr/bin/env python3
"""Print import cycles between the library's modules (src/, CLI excluded): `use crate::..` and
`super::..` references outside comments and test modules, as strongly connected components."""
import re,glob,sys
files=[f for f in glob.glob('src/**/*.rs',recursive=True) if not f.startswith('src/cli') and f!='src/main.rs']
def modpath(f):
    p=f[4:-3].split('/')
    if p[-1]=='mod': p=p[:-1]
    if p==['lib']: p=[]
    return tuple(p)
mods={modpath(f):f for f in files}
def resolve(parts):
    for n in range(len(parts),0,-1):
        if tuple(parts[:n]) in mods: return tuple(parts[:n])
g={}
for f in files:
    m=modpath(f); src=open(f).read()
    src=re.split(r'#\[cfg\(test\)\]\s*mod tests',src)[0]
    src='\n'.join(l for l in src.splitlines() if not l.strip().startswith('//'))
    deps={}
    for ref in re.findall(r'\b((?:crate|super)(?:::\w+)+)',src):
        parts=ref.split('::')
        if parts[0]=='crate': abs_=parts[1:]
        else:
            b=list(m)
            while parts and parts[0]=='super': b=b[:-1]; parts=parts[1:]
            abs_=b+parts
        r=resolve(abs_)
        if r and r!=m: deps.setdefault(r,ref)
    for grp in re.findall(r'use super::\{([^}]*)\}',src):
        for name in re.findall(r'\b(\w+)\b',grp):
            r=resolve(list(m[:-1])+[name])
            if r and r!=m: deps.setdefault(r,'super::'+name)
    g[m]=deps
idx=[0];stack=[];on=set();low={};num={};out=[]
sys.setrecursionlimit(10000)
def sc(v):
    num[v]=low[v]=idx[0];idx[0]+=1;stack.append(v);on.add(v)
    for w in g.get(v,{}):
        if w not in num: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],num[w])
    if low[v]==num[v]:
        comp=[]
        while True:
            w=stack.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: out.append(comp)
for v in list(g):
    if v not in num: sc(v)
for c in out:
    print('cycle:',['::'.join(x) for x in c])
    for a in c:
        for b,ref in g[a].items():
            if b in c: print('   ','::'.join(a),'->','::'.join(b),'via',ref)
if not out: print('no cycles')
